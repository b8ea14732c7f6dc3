"""Per-group learning rates of the tokenizer optimizer (cnn_lr_scale, codebook_lr_scale)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from gigatok_jax.train import optim


def _cfg():
  return ml_collections.ConfigDict(dict(lr=1e-3, b1=0.9, b2=0.95, weight_decay=1e-4, grad_clip=10.0,
                                        warmup_steps=0, warmup_init_ratio=0.01, final_lr=1e-4))


def _params():
  k = jax.random.split(jax.random.key(0), 3)
  return {"encoder": {"conv_in": {"kernel": jax.random.normal(k[0], (3, 3, 3, 4))}},
          "decoder": {"norm_out": {"scale": jnp.ones((4,))}},
          "s2to1encoder": {"stack": {"kernel": jax.random.normal(k[1], (4, 4))}},
          "quantize": {"embedding": jax.random.normal(k[2], (8, 4))}}


def _updates(tx, params, steps=3):
  state = tx.init(params)
  out = None
  for i in range(steps):
    grads = jax.tree.map(lambda p, i=i: jnp.sin(p * (i + 1)), params)
    out, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, out)
  return out, state


def test_scale_one_is_the_reference_optimizer_and_state_layout():
  params = _params()
  plain, _ = optim.adamw(_cfg(), 100, 1e-3)
  same, _ = optim.adamw(_cfg(), 100, 1e-3, cnn_lr_scale=1.0)
  assert (jax.tree_util.tree_structure(plain.init(params))
          == jax.tree_util.tree_structure(same.init(params)))


def test_cnn_updates_are_scaled_and_the_rest_untouched():
  params = _params()
  plain, _ = optim.adamw(_cfg(), 100, 1e-3)
  scaled, _ = optim.adamw(_cfg(), 100, 1e-3, cnn_lr_scale=5.0)
  # One step from the same point: AdamW's update is linear in the lr, so the CNN's is 5x.
  u_plain, _ = _updates(plain, params, steps=1)
  u_scaled, _ = _updates(scaled, params, steps=1)
  for group in ("encoder", "decoder"):
    for a, b in zip(jax.tree.leaves(u_plain[group]), jax.tree.leaves(u_scaled[group])):
      np.testing.assert_allclose(np.asarray(b), 5.0 * np.asarray(a), rtol=1e-6)
  for group in ("s2to1encoder", "quantize"):
    for a, b in zip(jax.tree.leaves(u_plain[group]), jax.tree.leaves(u_scaled[group])):
      np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
  assert optim.cnn_mask(params) == {"encoder": {"conv_in": {"kernel": True}},
                                    "decoder": {"norm_out": {"scale": True}},
                                    "s2to1encoder": {"stack": {"kernel": False}},
                                    "quantize": {"embedding": False}}


def test_codebook_updates_are_scaled_apart_from_the_cnn():
  params = _params()
  plain, _ = optim.adamw(_cfg(), 100, 1e-3)
  scaled, _ = optim.adamw(_cfg(), 100, 1e-3, cnn_lr_scale=5.0, codebook_lr_scale=3.0)
  u_plain, _ = _updates(plain, params, steps=1)
  u_scaled, _ = _updates(scaled, params, steps=1)
  for group, factor in (("encoder", 5.0), ("decoder", 5.0), ("quantize", 3.0),
                        ("s2to1encoder", 1.0)):
    for a, b in zip(jax.tree.leaves(u_plain[group]), jax.tree.leaves(u_scaled[group])):
      np.testing.assert_allclose(np.asarray(b), factor * np.asarray(a), rtol=1e-6)
  assert optim.codebook_mask(params)["quantize"] == {"embedding": True}
  assert not any(jax.tree.leaves({k: v for k, v in optim.codebook_mask(params).items()
                                  if k != "quantize"}))


def test_decay_norms_decays_norm_parameters_too():
  """optim.decay_norms (the official DDP trainer) decays every parameter; the default skips norms."""
  params = _params()
  assert optim.decay_mask(params)["decoder"]["norm_out"]["scale"] is False
  assert all(jax.tree.leaves(optim.decay_all(params)))
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  for mask, shrinks in ((optim.decay_mask, False), (optim.decay_all, True)):
    tx, _ = optim.adamw(_cfg(), 100, 1e-3, mask=mask)
    update, _ = tx.update(zero_grads, tx.init(params), params)
    # With zero gradients the update is the decay alone: -lr * wd * param where decayed.
    assert bool(jnp.any(update["decoder"]["norm_out"]["scale"] != 0)) == shrinks


def test_tokenizer_task_uses_the_mask_of_its_recipe(monkeypatch):
  from gigatok_jax import parallel  # pylint: disable=import-outside-toplevel
  from gigatok_jax.train import tokenizer as tokenizer_train  # pylint: disable=import-outside-toplevel
  from helpers import load_recipe  # pylint: disable=import-outside-toplevel
  config = load_recipe("tokenizer_ss", "tiny")
  config.loss.update(perceptual_weight=0.0, semantic_weight=0.0)   # no teacher files here
  seen = []
  original = optim.adamw
  monkeypatch.setattr(optim, "adamw", lambda *a, mask=None, **k: (seen.append(mask),
                                                                   original(*a, mask=mask, **k))[1])
  mesh = parallel.make_mesh(config.mesh, jax.devices()[:1])
  tokenizer_train.TokenizerTask(config, mesh)
  assert config.optim.decay_norms and seen == [optim.decay_all, optim.decay_all]
  config.optim.decay_norms = False
  seen.clear()
  tokenizer_train.TokenizerTask(config, mesh)
  assert seen == [optim.decay_mask, optim.decay_mask]
