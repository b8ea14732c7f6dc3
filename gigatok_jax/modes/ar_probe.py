"""`--mode=ar_probe` (GPT recipes): the paper's AR-probing protocol as one command (docs/spec.md §4.3).

train the GPT on the tokenizer's codes (or resume) up to `total_steps` -> sample -> gFID / IS /
precision-recall -> validation loss -> linear probe, with one results JSON
(<workdir>/eval/ar_probe_<step>.json). `configs/gpt_b_probe.py` is the protocol's recipe: GPT-B,
constant lr 1e-4 without warm-up, stopped at 250k steps. Everything the later stages need (codes,
validation codes, reference batch, Inception weights) is checked before training starts.
"""

from __future__ import annotations

from gigatok_jax import console, modes, runs


def run(config, workdir: str, *, progress: bool = True, options=None, features_fn=None) -> dict:
  """`features_fn` replaces the Inception network (tests). The stages run through the mode table
  (the config was checked once, for all of them, before training: config/validate.py,
  check_ar_probe_inputs + the sample and probe checks)."""
  del options

  def stage(name, cfg=config, **opts):
    return modes.run_mode(name, cfg, workdir, progress=progress, options=opts, validate=False)
  stage("train")
  samples = stage("sample")
  eval_cfg = config.copy_and_resolve_references()
  eval_cfg.eval.samples = samples["npz"]
  scores = stage("eval", eval_cfg, features_fn=features_fn)
  probe = stage("probe")
  step = int(probe["gpt_step"])
  result = {
      "gpt_step": step, "protocol": scores["protocol"], "gfid": scores["fid"],
      "sfid": scores.get("sfid"), "inception_score": scores["inception_score"],
      "precision": scores.get("precision"), "recall": scores.get("recall"),
      "val_loss": scores.get("val_loss"), "val_accuracy": scores.get("val_accuracy"),
      "linear_probe_top1": probe["top1"], "probe_layer": probe["layer"],
      "sampling": samples["sampling"], "num_samples": samples["num_samples"],
      "samples": scores["samples"], "reference": scores["reference"],
      "inception": scores["inception"],
      "details": {"eval": scores.get("json"), "probe": probe.get("json")},
  }
  result["json"] = runs.save_eval(workdir, f"ar_probe_{step:08d}", result)
  console.info(f"AR probing at step {step}: gFID {result['gfid']:.3f}, validation loss "
                 f"{result['val_loss']:.4f}, linear probe top-1 {100 * result['linear_probe_top1']:.2f}%; "
                 f"{result['json']}")
  return result
