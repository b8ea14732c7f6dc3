r"""gigatok_jax beside the official GigaTok PyTorch code, on this machine, in one command.

  python bench/compare.py --official=/path/to/GigaTok [--rows=tokenizer_train,gpt_train]
      [--steps=5] [--warmup=1] [--rounds=2] [--torch_compile=gpt_train,gpt_sample] [--size=ss]

`--official` is a checkout of github.com/SilentView/GigaTok; its model classes are imported from
there (`tokenizer/tokenizer_image/vq/vq_vit_model.py`, `autoregressive/models/gpt_1d.py`,
`autoregressive/models/generate.py`), never copied. Prints one JSON object on stdout with one entry
per row: `official` (eager), `official_compiled` (torch.compile, for the rows in --torch_compile),
`ours`, and `ratio` = official eager time / ours (> 1: we are faster; `ratio_compiled` likewise).

Rows (float32 on both sides, random weights and inputs of the real shapes):
  tokenizer_train  S-S (or --size=bl: B-L) tokenizer, batch 2, 256 px: L2 + VQ losses fwd + bwd,
                   gradient clipping, AdamW (the official VQ_SS256.yaml optimizer settings)
  tokenizer_infer  the same tokenizer, batch 8: encode + quantize + decode, no gradients
  gpt_train        GPT-B, batch 4, 256 tokens, dropouts on: cross-entropy fwd + bwd, clipping,
                   AdamW (train_c2i.py's settings)
  gpt_sample       GPT-B with a KV cache, batch 8 (16 rows with CFG), 256 tokens, CFG 1.75 with the
                   step schedule (from 18% of the tokens), temperature 1, no top-k / top-p

Every (row, side) runs in its own worker process (`--worker`), so the two frameworks' thread pools
never share a process; the sides alternate within each round (official, ours, official, ours...).
Times are the median of all timed calls of all rounds, each after `--warmup` untimed calls.

Per side: `time_s` (median; `samples`), `model_flops` (matmul + convolution FLOPs of one call as
counted by torch.utils.flop_counter on the official model: the same count divides both sides' times,
so MFU compares like with like), `mfu` (model_flops / time / matmul peak), `xla_flops` (ours: XLA's
cost analysis, all ops), `peak_rss_bytes` (the worker process's peak resident memory), compile time.
The matmul peak is bench/matmul_peak.py's float32 figure, measured once before the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
ROWS = ("tokenizer_train", "tokenizer_infer", "gpt_train", "gpt_sample")
SIZES = {  # --size: our recipe and the official yaml of the same tokenizer
    "ss": ("configs/tokenizer_ss.py", "configs/vq/VQ_SS256.yaml"),
    "bl": ("configs/tokenizer_bl.py", "configs/vq/VQ_BL256.yaml"),
}
BATCH = {"tokenizer_train": 2, "tokenizer_infer": 8, "gpt_train": 4, "gpt_sample": 8}
IMAGE_SIZE, NUM_TOKENS, VOCAB, CFG_SCALE, CFG_START = 256, 256, 16384, 1.75, 0.18


def log(*args) -> None:
  print(*args, file=sys.stderr, flush=True)


def _timed(call, steps: int, warmup: int, sync=lambda out: out) -> list[float]:
  for _ in range(warmup):
    sync(call())
  samples = []
  for _ in range(steps):
    t0 = time.perf_counter()
    sync(call())
    samples.append(time.perf_counter() - t0)
  return samples


def _peak_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # Linux reports KiB


# --- the official side ------------------------------------------------------------------------
def _official_tokenizer(official: str, size: str):
  import yaml  # pylint: disable=import-outside-toplevel
  from tokenizer.tokenizer_image.vq import vq_vit_model  # the checkout is on sys.path
  with open(os.path.join(official, SIZES[size][1])) as f:
    init_args = yaml.safe_load(f)["model"]["init_args"]
  model = vq_vit_model.VQVitModelPlus(vq_vit_model.VQVitModelPlusArgs(**init_args))
  # The usage buffer is registered as an nn.Parameter. On a GPU, vq_train.py's `.to(device)`
  # copies it into a tensor that is no longer a leaf; on the CPU the move is a no-op, and the
  # in-place usage update of a training forward raises "a view of a leaf Variable that requires
  # grad". No gradient ever flows into it, so switching its flag off changes no arithmetic.
  for name, buffer in model.named_buffers():
    if name.endswith("codebook_used"):
      buffer.requires_grad_(False)
  return model


def _official_gpt():
  from autoregressive.models.gpt_1d import GPT_models
  # train_c2i.py's defaults: one class token, dropouts 0.1, no drop path, learned positions.
  return GPT_models["GPT-B"](vocab_size=VOCAB, block_size=NUM_TOKENS, num_classes=1000,
                             cls_token_num=1, model_type="c2i", resid_dropout_p=0.1,
                             ffn_dropout_p=0.1, drop_path_rate=0.0, token_dropout_p=0.1)


def _official_adamw(torch, model, weight_decay: float, decay_all: bool):
  """AdamW as the official trainers build it: vq_train.py decays every parameter; train_c2i.py
  decays tensors of rank >= 2 only and asks for the fused kernel where torch has one."""
  import inspect  # pylint: disable=import-outside-toplevel
  params = [p for p in model.parameters() if p.requires_grad]
  if decay_all:
    return torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=weight_decay)
  groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
  fused = {"fused": True} if "fused" in inspect.signature(torch.optim.AdamW).parameters else {}
  return torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95), **fused)


def _official_step(torch, model, opt, loss_fn, clip: float):
  """One training step as the official trainers take it: backward, clip the gradient norm, AdamW."""
  def call():
    loss = loss_fn()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return loss
  return call


def official_worker(row: str, args) -> dict:
  sys.path.insert(0, os.path.abspath(args.official))
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  b = BATCH[row]
  out = {"torch_version": torch.__version__, "threads": torch.get_num_threads(),
         "compiled": bool(args.compiled)}
  maybe_compile = (lambda m: torch.compile(m)) if args.compiled else (lambda m: m)

  if row.startswith("tokenizer"):
    model = _official_tokenizer(args.official, args.size)
    x = torch.rand(b, 3, IMAGE_SIZE, IMAGE_SIZE) * 2 - 1
    if row == "tokenizer_train":
      model.train()
      fwd = maybe_compile(model)
      opt = _official_adamw(torch, model, 1e-4, decay_all=True)

      def loss_fn():
        (dec, _), (diff, _) = fwd(x, rec_loss=False)     # L2 + VQ terms only, as ours below
        return F.mse_loss(dec, x) + diff[0] + diff[1] + diff[2]
      call = _official_step(torch, model, opt, loss_fn, clip=10.0)
    else:
      model.eval()
      fwd = maybe_compile(model)

      def call():
        with torch.no_grad():
          return fwd(x)[0]
  else:
    model = _official_gpt()
    codes = torch.randint(0, VOCAB, (b, NUM_TOKENS))
    labels = torch.randint(0, 1000, (b,))
    if row == "gpt_train":
      model.train()
      fwd = maybe_compile(model)
      opt = _official_adamw(torch, model, 0.05, decay_all=False)

      def loss_fn():
        return fwd(idx=codes[:, :-1], cond_idx=labels, targets=codes)[1]
      call = _official_step(torch, model, opt, loss_fn, clip=1.0)
    else:
      import torch.distributed as dist  # pylint: disable=import-outside-toplevel
      from autoregressive.models import generate as official_generate
      if not dist.is_initialized():   # generate() asks for the rank
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=0,
                                world_size=1)
      model.eval()
      fwd = maybe_compile(model)   # the sampling scripts' --compile wraps the whole model

      def call():
        with torch.no_grad():
          return official_generate.generate(
              fwd, labels, NUM_TOKENS, cfg_scale=CFG_SCALE, cfg_interval=-1, cfg_schedule="step",
              cfg_schedule_kwargs={"window_start": CFG_START, "window_end": 1.0},
              temperature=1.0, top_k=0, top_p=1.0, sample_logits=True)

  t0 = time.perf_counter()
  call()
  out["first_call_s"] = time.perf_counter() - t0          # includes torch.compile's compile
  if row != "gpt_sample" and not args.compiled:
    with FlopCounterMode(display=False) as counter:
      call()
    out["model_flops"] = float(counter.get_total_flops())
  out["samples"] = _timed(call, args.steps, max(args.warmup - 1, 0))
  out["peak_rss_bytes"] = _peak_rss_bytes()
  return out


# --- our side ---------------------------------------------------------------------------------
def _our_config(row: str, args):
  sys.path.insert(0, REPO_ROOT)
  from gigatok_jax.config import load_recipe  # pylint: disable=import-outside-toplevel
  recipe = SIZES[args.size][0] if row.startswith("tokenizer") else "configs/gpt_b.py"
  config = load_recipe(os.path.join(REPO_ROOT, recipe))
  config.global_batch_size = BATCH[row]
  config.model.dtype = "float32"
  if row.startswith("tokenizer"):
    config.loss.perceptual_weight = config.loss.semantic_weight = 0.0   # L2 + VQ, as above
  return config


def ours_worker(row: str, args) -> dict:
  sys.path.insert(0, REPO_ROOT)
  import gigatok_jax  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from gigatok_jax import parallel  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, HERE)
  import common  # pylint: disable=import-outside-toplevel

  config = _our_config(row, args)
  mesh = parallel.make_mesh(config.mesh)
  rng = np.random.default_rng(0)
  b = BATCH[row]
  out = {"jax_version": jax.__version__, "devices": len(jax.devices())}
  def compile_under_mesh(jitted, *call_args):
    """Models are built outside the mesh context (the builder places them), steps lowered in it."""
    with jax.set_mesh(mesh):
      return jitted.lower(*call_args).compile()

  t0 = time.perf_counter()
  if row == "tokenizer_train":
    from gigatok_jax.train.tokenizer import TokenizerTask  # pylint: disable=import-outside-toplevel
    task = TokenizerTask(config, mesh)
    state = {"s": task.init_state()}
    frozen = task.load_teachers()
    batch = parallel.global_batch(
        {"image": rng.uniform(-1, 1, (b, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32),
         "label": np.zeros((b,), np.int32)}, mesh, task.rules)
    compiled = compile_under_mesh(task.jitted_train_step((False, False)), state["s"], batch,
                                  frozen)

    def call():
      state["s"], metrics = compiled(state["s"], batch, frozen)
      return metrics
  elif row == "tokenizer_infer":
    from gigatok_jax import build, inference  # pylint: disable=import-outside-toplevel
    spec = build.generator(config, mesh)
    params = jax.jit(lambda: spec.init(config.seed)[0], out_shardings=spec.shardings)()
    images = parallel.global_batch(
        {"image": rng.uniform(-1, 1, (b, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)},
        mesh, build.axis_rules(config))["image"]
    compiled = compile_under_mesh(inference.reconstruct_fn(spec), params, images)

    def call():
      return compiled(params, images)
  elif row == "gpt_train":
    from gigatok_jax.train.gpt import GPTTask  # pylint: disable=import-outside-toplevel
    task = GPTTask(config, mesh)
    state = {"s": task.init_state()}
    batch = parallel.global_batch(
        {"tokens": rng.integers(0, VOCAB, (b, NUM_TOKENS)).astype(np.int32),
         "label": rng.integers(0, 1000, (b,)).astype(np.int32)}, mesh, task.rules)
    compiled = compile_under_mesh(task.jitted_train_step(), state["s"], batch)

    def call():
      state["s"], metrics = compiled(state["s"], batch)
      return metrics
  else:
    from gigatok_jax import build  # pylint: disable=import-outside-toplevel
    from gigatok_jax.models.sampler import SamplingSettings, generate  # pylint: disable=import-outside-toplevel
    spec = build.gpt(config, mesh)
    params = jax.jit(lambda: spec.init(config.seed)[0], out_shardings=spec.shardings)()
    settings = SamplingSettings(cfg_scale=CFG_SCALE, cfg_schedule="step",
                                cfg_step_fraction=CFG_START, temperature=1.0, top_k=0, top_p=1.0)
    labels = jax.numpy.asarray(rng.integers(0, 1000, (b,)).astype(np.int32))
    key = jax.random.key(0)
    compiled = compile_under_mesh(
        jax.jit(lambda p, y, k: generate(spec.merge(p), y, k, settings)), params, labels, key)

    def call():
      return compiled(params, labels, key)
  out["compile_s"] = time.perf_counter() - t0
  out["xla_flops"] = common.flops(compiled)
  out["samples"] = _timed(call, args.steps, args.warmup, sync=jax.block_until_ready)
  out["peak_rss_bytes"] = _peak_rss_bytes()
  return out


# --- the driver -------------------------------------------------------------------------------
def _run_worker(side: str, row: str, args, compiled: bool = False) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), f"--worker={side}", f"--row={row}",
         f"--official={args.official}", f"--steps={args.steps}", f"--warmup={args.warmup}",
         f"--size={args.size}", f"--port={args.port}"] + (["--compiled"] if compiled else [])
  label = f"{row}: {side}{' (torch.compile)' if compiled else ''}"
  log(f"{label} ...")
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    log(f"{label} failed: {tail}")
    return {"error": tail}
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  log(f"{label}: median {statistics.median(result['samples']):.3f} s "
      f"({time.perf_counter() - t0:.0f} s in all)")
  return result


def _merge(parts: list[dict], model_flops: float | None, peak: float | None) -> dict:
  if any("error" in p for p in parts):
    return {"error": next(p["error"] for p in parts if "error" in p)}
  samples = [s for p in parts for s in p["samples"]]
  merged = {k: v for k, v in parts[0].items() if k != "samples"}
  merged["peak_rss_bytes"] = max(p["peak_rss_bytes"] for p in parts)
  merged.update(time_s=statistics.median(samples), min_s=min(samples), samples=samples)
  if model_flops:
    merged["model_flops"] = model_flops
    merged["achieved_flops_per_s"] = model_flops / merged["time_s"]
    if peak:
      merged["mfu"] = merged["achieved_flops_per_s"] / peak
  return merged


def matmul_peak() -> dict | None:
  proc = subprocess.run([sys.executable, os.path.join(HERE, "matmul_peak.py"),
                         "--dtype=float32"], capture_output=True, text=True, check=False)
  try:
    return json.loads(proc.stdout)
  except json.JSONDecodeError:
    log(f"matmul peak failed: {proc.stderr.strip().splitlines()[-1:]}")
    return None


def _refuse(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  raise SystemExit(2)


def drive(args) -> dict:
  rows = [r.strip() for r in args.rows.split(",") if r.strip()]
  for r in rows:
    if r not in ROWS:
      _refuse(f"--rows: unknown row {r!r} (rows: {', '.join(ROWS)})")
  if not os.path.isfile(os.path.join(args.official, "autoregressive", "models", "gpt_1d.py")):
    _refuse(f"--official={args.official} is not a checkout of the official GigaTok repository "
            "(no autoregressive/models/gpt_1d.py)")
  yaml_path = os.path.join(args.official, SIZES[args.size][1])
  if any(r.startswith("tokenizer") for r in rows) and not os.path.isfile(yaml_path):
    _refuse(f"--size={args.size}: {yaml_path} not found in the official checkout")
  compiled_rows = {r.strip() for r in args.torch_compile.split(",") if r.strip()}
  peak = matmul_peak()
  peak_flops = peak["peak_flops_per_s"] if peak else None
  result = {"benchmark": "compare_official", "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": {"cpu_count": os.cpu_count(), "load_average_start": os.getloadavg(),
                        "matmul_peak_float32_flops_per_s": peak_flops},
            "size": args.size, "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds,
            "rows": {}}
  for row in rows:
    official, ours, compiled = [], [], []
    for _ in range(args.rounds):
      official.append(_run_worker("official", row, args))
      ours.append(_run_worker("ours", row, args))
      if row in compiled_rows:
        compiled.append(_run_worker("official", row, args, compiled=True))
    flops = next((p.get("model_flops") for p in official if p.get("model_flops")), None)
    entry = {"batch_size": BATCH[row], "official": _merge(official, flops, peak_flops),
             "ours": _merge(ours, flops, peak_flops)}
    if compiled:
      entry["official_compiled"] = _merge(compiled, flops, peak_flops)
    if "time_s" in entry["official"] and "time_s" in entry["ours"]:
      entry["ratio"] = entry["official"]["time_s"] / entry["ours"]["time_s"]
    if "time_s" in entry.get("official_compiled", {}) and "time_s" in entry["ours"]:
      entry["ratio_compiled"] = entry["official_compiled"]["time_s"] / entry["ours"]["time_s"]
    if row == "gpt_sample":
      for side in ("official", "official_compiled", "ours"):
        if "time_s" in entry.get(side, {}):
          entry[side]["tokens_per_s"] = BATCH[row] * NUM_TOKENS / entry[side]["time_s"]
    result["rows"][row] = entry
    log(f"{row}: ratio {entry.get('ratio', float('nan')):.2f}"
        + (f", against torch.compile {entry['ratio_compiled']:.2f}"
           if "ratio_compiled" in entry else ""))
  result["machine"]["load_average_end"] = os.getloadavg()
  return result


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--official", required=True, help="checkout of the official GigaTok repository")
  p.add_argument("--rows", default=",".join(ROWS))
  p.add_argument("--steps", type=int, default=5, help="timed calls per worker")
  p.add_argument("--warmup", type=int, default=1, help="untimed calls per worker")
  p.add_argument("--rounds", type=int, default=1, help="alternations official / ours per row")
  p.add_argument("--torch_compile", default="gpt_train,gpt_sample",
                 help="rows also timed with torch.compile (the GPT trainer compiles by default)")
  p.add_argument("--size", default="ss", choices=sorted(SIZES))
  p.add_argument("--port", type=int, default=29517, help="local port of the sampling worker's "
                 "one-process torch.distributed group (generate() asks for the rank)")
  p.add_argument("--worker", choices=("official", "ours"), help=argparse.SUPPRESS)
  p.add_argument("--row", choices=ROWS, help=argparse.SUPPRESS)
  p.add_argument("--compiled", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.worker:
    work = official_worker if args.worker == "official" else ours_worker
    print(json.dumps(work(args.row, args)), flush=True)
    return
  print(json.dumps(drive(args), indent=1), flush=True)


if __name__ == "__main__":
  main()
