"""`--mode=probe` (GPT recipes): linear probing on the frozen GPT's features (docs/spec.md §4.5).

Features: the hidden state after block `probe.layer` (0 = n_layer // 2, as the reference) of the
teacher-forced pass over ground-truth tokens with the null class as condition, mean-pooled over
all positions. Probe: BatchNorm without affine (eps 1e-6; batch statistics in training, running
statistics for evaluation) + Linear(d, classes) initialised truncated-normal(0.01), trained with
LARS (momentum 0.9, no weight decay) at lr = base_lr x batch / 256 with linear warm-up then cosine
decay; reports top-1 on the validation codes. Features come from the first (un-augmented) view of
each code record; the reference crops and flips images instead, which codes cannot do.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gigatok_jax import console, inference, parallel, runs
from gigatok_jax.data import codes as codes_lib

BN_EPS = 1e-6
BN_MOMENTUM = 0.1          # torch's: running = 0.9 running + 0.1 batch


def extract_features(gpt: inference.Loaded, params, codes_dir: str, key: str, layer: int,
                     batch_size: int):
  """Mean-pooled (N, W) float32 features and (N,) labels of every record's first view."""
  source = codes_lib.CodeRecordSource(codes_lib.complete_shards(codes_dir, key))
  model_null = gpt.config.model.num_classes

  @jax.jit
  def features(params, tokens):
    model = gpt.model(params)
    null = jnp.full((tokens.shape[0],), model_null, jnp.int32)
    return model.hidden_states(tokens, null, layer).astype(jnp.float32).mean(axis=1)

  feats, labels = [], []
  for start in range(0, len(source), batch_size):
    records = [source[i] for i in range(start, min(start + batch_size, len(source)))]
    tokens = np.stack([r["codes"][0] for r in records])
    padded = np.resize(tokens, (batch_size,) + tokens.shape[1:])   # one compiled shape
    with jax.set_mesh(gpt.mesh):
      out = np.asarray(jax.device_get(features(params, padded)))
    feats.append(out[:len(records)])
    labels.append(np.array([r["label"] for r in records], np.int32))
  return np.concatenate(feats), np.concatenate(labels)


def train_probe(train_x, train_y, eval_x, eval_y, *, num_classes: int, epochs: int,
                warmup_epochs: int, batch_size: int, base_lr: float, seed: int = 0) -> dict:
  """Trains BN(no affine) + linear on features; returns top-1 on the eval set and the settings."""
  n, d = train_x.shape
  batch_size = min(batch_size, n)
  steps_per_epoch = max(1, n // batch_size)
  total = epochs * steps_per_epoch
  lr = base_lr * batch_size / 256
  schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup_epochs * steps_per_epoch,
                                                max(total, warmup_epochs * steps_per_epoch + 1))
  tx = optax.lars(schedule, weight_decay=0.0, momentum=0.9)
  key = jax.random.key(seed)
  params = {"w": 0.01 * jax.random.truncated_normal(key, -2.0, 2.0, (d, num_classes)),
            "b": jnp.zeros((num_classes,))}
  stats = {"mean": jnp.zeros((d,)), "var": jnp.ones((d,))}
  opt = tx.init(params)

  @jax.jit
  def step(params, stats, opt, x, y):
    mean, var = x.mean(0), x.var(0)

    def loss_fn(p):
      logits = ((x - mean) * jax.lax.rsqrt(var + BN_EPS)) @ p["w"] + p["b"]
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt = tx.update(grads, opt, params)
    unbiased = var * x.shape[0] / max(x.shape[0] - 1, 1)
    stats = {"mean": (1 - BN_MOMENTUM) * stats["mean"] + BN_MOMENTUM * mean,
             "var": (1 - BN_MOMENTUM) * stats["var"] + BN_MOMENTUM * unbiased}
    return optax.apply_updates(params, updates), stats, opt, loss

  rng = np.random.default_rng(seed)
  loss = float("nan")
  for _ in range(epochs):
    order = rng.permutation(n)
    for i in range(steps_per_epoch):
      idx = order[i * batch_size:(i + 1) * batch_size]
      params, stats, opt, loss = step(params, stats, opt, train_x[idx], train_y[idx])
  logits = ((eval_x - stats["mean"]) * jax.lax.rsqrt(stats["var"] + BN_EPS)) @ params["w"] + params["b"]
  top1 = float(np.mean(np.argmax(np.asarray(logits), -1) == eval_y))
  return {"top1": top1, "final_train_loss": float(loss), "epochs": epochs,
          "warmup_epochs": warmup_epochs, "batch_size": batch_size, "lr": lr,
          "steps": total, "num_train": int(n), "num_eval": int(len(eval_y))}


def run(config, workdir: str, *, progress: bool = True, options=None, devices=None) -> dict:
  """Loads the latest GPT checkpoint, probes it on data.codes_path / data.eval_codes_path."""
  del progress, options
  p = config.probe                       # checked by config/validate.py (check_probe)
  layer = p.layer or config.model.layers // 2
  gpt = inference.load(config, workdir, parallel.make_mesh(config.mesh, devices))
  params, step = gpt.params, gpt.step
  t0 = time.time()
  train_x, train_y = extract_features(gpt, params, config.data.codes_path, "data.codes_path",
                                      layer, p.feature_batch_size)
  eval_x, eval_y = extract_features(gpt, params, config.data.eval_codes_path,
                                    "data.eval_codes_path", layer, p.feature_batch_size)
  result = train_probe(train_x, train_y, eval_x, eval_y, num_classes=config.model.num_classes,
                       epochs=p.epochs, warmup_epochs=p.warmup_epochs, batch_size=p.batch_size,
                       base_lr=p.base_lr, seed=config.seed)
  result.update({"gpt_step": step, "layer": layer, "feature_dim": int(train_x.shape[1]),
                 "codes_path": config.data.codes_path,
                 "eval_codes_path": config.data.eval_codes_path,
                 "seconds": round(time.time() - t0, 2)})
  if jax.process_index() == 0:
    out = result["json"] = runs.save_eval(workdir, f"probe_{step:08d}", result)
    console.info(f"linear probe of GPT step {step}, layer {layer}: top-1 "
                   f"{100 * result['top1']:.2f}% on {result['num_eval']} validation images; {out}")
  return result

