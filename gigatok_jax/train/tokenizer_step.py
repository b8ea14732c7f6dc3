"""The tokenizer train state and its one jitted train step (generator + discriminator).

`TokenizerTask` builds the models abstractly, derives every sharding from the logical axis names,
initialises the state directly into its shardings, and compiles `train_step(state, batch)` with
in/out shardings and donation. The loss phase is static: before `loss.disc_start_step` the step
neither runs the discriminator nor updates it, and the auxiliary losses run only before
`loss.aux_loss_end`; each phase is its own executable, compiled when the run reaches it.

Generator loss (spec 3.1):  w_rec * L2 + w_cb * vq + commit + w_ent * entropy + w_gan * (-D(fake))
                            + w_perc * LPIPS + w_sem * (-cos(projector(dec layer k), DINOv2))
                            [+ w_feat * MSE(sg(CNN map), decoder map) + L2(+LPIPS)(shortcut) while aux]
The frozen teachers (train/teachers.py) are a third, non-donated argument of the step.
Discriminator loss (spec 3.2): w_gan * 0.5 * (mean relu(1 - D(real)) + mean relu(1 + D(fake)))
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from gigatok_jax import parallel
from gigatok_jax.models.discriminator import PatchGANDiscriminator
from gigatok_jax.models.layers import block_output_sharding
from gigatok_jax.models.quantizer import code_perplexity, codebook_usage
from gigatok_jax.models.tokenizer import Tokenizer
from gigatok_jax.train import optim
from gigatok_jax.train.teachers import FrozenTeachers, cosine_similarity

USAGE_BUFFER = 65536  # codebook usage is measured over the last 65536 code indices (spec 2.5)


@flax.struct.dataclass
class TokenizerState:
  step: jax.Array                 # int32 scalar
  gen_params: Any                 # pure dict of generator Params
  gen_opt: Any                    # optax state
  disc_params: Any
  disc_stats: Any                 # discriminator BatchNorm running statistics
  disc_opt: Any
  ema_params: Any                 # pure dict or None
  recent_codes: jax.Array         # (USAGE_BUFFER,) int32, -1 = empty


def psnr(a: jax.Array, b: jax.Array) -> jax.Array:
  """Mean PSNR in dB of images in [-1, 1] (peak-to-peak 2), per image then averaged."""
  mse = jnp.mean(jnp.square(jnp.clip(a, -1, 1) - jnp.clip(b, -1, 1)), axis=(1, 2, 3))
  return jnp.mean(10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10)))


def hinge_d_loss(logits_real, logits_fake):
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


class TokenizerTask:
  """Everything needed to initialise, shard and step a tokenizer training run."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, *,
               random_teachers: bool = False):
    """`random_teachers`: random-weight DINOv2/LPIPS of the right shapes (benchmarks only)."""
    self.config = config
    self.mesh = mesh
    self.rules = tuple(tuple(r) for r in config.mesh.axis_rules)
    c = config
    self.gen_tx, self.gen_schedule = optim.adamw(c.optim, c.total_steps, c.optim.lr)
    self.disc_tx, _ = optim.adamw(c.optim, c.total_steps, c.optim.disc_lr)

    gen = nnx.eval_shape(lambda: self._make_generator(0))
    self.gen_graph, abs_gen_params = nnx.split(gen, nnx.Param)
    disc = nnx.eval_shape(lambda: self._make_discriminator(0))
    self.disc_graph, abs_disc_params, abs_disc_stats = nnx.split(disc, nnx.Param, nnx.BatchStat)

    gen_sh = parallel.state_shardings(abs_gen_params, mesh, self.rules)
    disc_sh = parallel.state_shardings(abs_disc_params, mesh, self.rules)
    stats_sh = parallel.state_shardings(abs_disc_stats, mesh, self.rules)
    self.abstract_state = jax.eval_shape(self._init_state)
    rep = parallel.replicated(mesh)
    s = self.abstract_state
    self.state_shardings = TokenizerState(
        step=rep,
        gen_params=gen_sh,
        gen_opt=parallel.optimizer_shardings(self.gen_tx, s.gen_opt, gen_sh, mesh),
        disc_params=disc_sh,
        disc_stats=stats_sh,
        disc_opt=parallel.optimizer_shardings(self.disc_tx, s.disc_opt, disc_sh, mesh),
        ema_params=gen_sh if s.ema_params is not None else None,
        recent_codes=rep,
    )
    self.abstract_state = jax.tree.map(
        lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
        self.abstract_state, self.state_shardings)
    self.num_params = sum(x.size for x in jax.tree.leaves(s.gen_params))
    self.num_disc_params = sum(x.size for x in jax.tree.leaves(s.disc_params))
    self.teachers = FrozenTeachers(config, random_init=random_teachers)
    self.teacher_shardings = self.teachers.shardings(mesh, self.rules)
    self._steps = {}

  # --- construction ---------------------------------------------------------------------------
  def _make_generator(self, seed: int) -> Tokenizer:
    return Tokenizer(self.config.model, self.config.data.image_size, rngs=nnx.Rngs(seed))

  def _make_discriminator(self, seed: int) -> PatchGANDiscriminator:
    d = self.config.discriminator
    return PatchGANDiscriminator(ndf=d.ndf, n_layers=d.n_layers, rngs=nnx.Rngs(seed))

  def _init_state(self) -> TokenizerState:
    seed = self.config.seed
    gen = self._make_generator(seed)
    disc = self._make_discriminator(seed + 1)
    gen_params = nnx.to_pure_dict(nnx.state(gen, nnx.Param))
    disc_params = nnx.to_pure_dict(nnx.state(disc, nnx.Param))
    disc_stats = nnx.to_pure_dict(nnx.state(disc, nnx.BatchStat))
    return TokenizerState(
        step=jnp.zeros((), jnp.int32),
        gen_params=gen_params,
        gen_opt=self.gen_tx.init(gen_params),
        disc_params=disc_params,
        disc_stats=disc_stats,
        disc_opt=self.disc_tx.init(disc_params),
        ema_params=(jax.tree.map(jnp.copy, gen_params) if self.config.optim.ema_decay > 0 else None),
        recent_codes=jnp.full((USAGE_BUFFER,), -1, jnp.int32),
    )

  def load_teachers(self) -> dict[str, Any]:
    """The frozen teachers' weights on the mesh ({} when no teacher loss is on)."""
    if self.teachers.random_init:
      return self.teachers.init_random(self.mesh, self.rules, seed=self.config.seed)
    return self.teachers.load(self.mesh, self.rules)

  def init_state(self) -> TokenizerState:
    """Initialises parameters directly into their shardings (no host copy of the full model)."""
    with jax.set_mesh(self.mesh):
      return jax.jit(self._init_state, out_shardings=self.state_shardings)()

  def generator(self, params) -> Tokenizer:
    return nnx.merge(self.gen_graph, params)

  # --- the train step -------------------------------------------------------------------------
  def phase(self, step: int) -> tuple[bool, bool]:
    """(GAN active, auxiliary losses active) at `step`: the static switches of the step."""
    lc = self.config.loss
    return (lc.disc_weight > 0 and step >= lc.disc_start_step, step < lc.aux_loss_end)

  def batch_shardings(self, batch_spec: dict[str, Any]):
    return {k: parallel.batch_sharding(self.mesh, self.rules, len(v.shape))
            for k, v in batch_spec.items()}

  def train_step_fn(self, phase: tuple[bool, bool] = (False, False)):
    """The pure step function (un-jitted) of a phase, for jit here and for AOT lowering elsewhere."""
    gan, aux = phase
    step = functools.partial(self._train_step, gan=gan, aux=aux)

    def constrained_step(*args):
      with block_output_sharding(parallel.batch_axes(self.rules)):
        return step(*args)
    return constrained_step

  def jitted_train_step(self, phase: tuple[bool, bool] = (False, False)):
    phase = tuple(phase)
    if phase not in self._steps:
      batch_sh = {"image": parallel.batch_sharding(self.mesh, self.rules, 4),
                  "label": parallel.batch_sharding(self.mesh, self.rules, 1)}
      self._steps[phase] = jax.jit(
          self.train_step_fn(phase),
          in_shardings=(self.state_shardings, batch_sh, self.teacher_shardings),
          out_shardings=(self.state_shardings, parallel.replicated(self.mesh)),
          donate_argnums=(0,))
    return self._steps[phase]

  def _train_step(self, state: TokenizerState, batch: dict[str, jax.Array],
                  frozen: dict[str, Any], *, gan: bool, aux: bool):
    c = self.config
    lc = c.loss
    teachers = self.teachers
    images = batch["image"].astype(jnp.float32)                     # (B, H, W, 3) in [-1, 1]
    # DINOv2 patch tokens of the input: a constant of the generator loss.
    teacher_tokens = teachers.semantic_target(frozen, images) if teachers.semantic else None

    def disc_apply(disc_params, stats, x):
      disc = nnx.merge(self.disc_graph, disc_params, stats)
      logits = disc(x, train=True)
      return logits, nnx.to_pure_dict(nnx.state(disc, nnx.BatchStat))

    def gen_loss_fn(gen_params):
      out = self.generator(gen_params)(images, with_entropy=lc.entropy_weight > 0,
                                       with_distill=teachers.semantic,
                                       with_shortcut=aux and lc.shortcut_reconstruction)
      rec = jnp.mean(jnp.square(out.reconstruction - images))
      loss = (lc.reconstruction_weight * rec + lc.codebook_weight * out.vq_loss + out.commit_loss
              + lc.entropy_weight * out.entropy_loss)
      terms = {"rec_loss": rec, "vq_loss": out.vq_loss, "commit_loss": out.commit_loss,
               "entropy_loss": out.entropy_loss}
      if teachers.perceptual:
        perc = teachers.perceptual_loss(frozen, out.reconstruction, images)
        loss = loss + lc.perceptual_weight * perc
        terms["lpips"] = perc
      if teachers.semantic:
        cos = cosine_similarity(out.distill, teacher_tokens)
        loss = loss - lc.semantic_weight * cos
        terms["semantic_cos"] = cos
      if aux:
        target = jax.lax.stop_gradient(out.encoder_map.astype(jnp.float32))
        feat = jnp.mean(jnp.square(out.decoder_map.astype(jnp.float32) - target))
        loss = loss + lc.feature_rec_weight * feat
        terms["feature_rec_loss"] = feat
        if out.shortcut is not None:
          short = jnp.mean(jnp.square(out.shortcut - images))
          loss = loss + lc.reconstruction_weight * short
          terms["shortcut_rec_loss"] = short
          if teachers.perceptual:
            short_perc = teachers.perceptual_loss(frozen, out.shortcut, images)
            loss = loss + lc.perceptual_weight * short_perc
            terms["shortcut_lpips"] = short_perc
      if gan:
        logits_fake, _ = disc_apply(state.disc_params, state.disc_stats, out.reconstruction)
        g_adv = -jnp.mean(logits_fake)
        loss = loss + lc.disc_weight * g_adv
        terms["gen_adv_loss"] = g_adv
      terms["gen_loss"] = loss
      return loss, (out, terms)

    (_, (out, metrics)), gen_grads = jax.value_and_grad(gen_loss_fn, has_aux=True)(state.gen_params)
    gen_updates, gen_opt = self.gen_tx.update(gen_grads, state.gen_opt, state.gen_params)
    gen_params = optax.apply_updates(state.gen_params, gen_updates)
    metrics["gen_grad_norm"] = optax.tree.norm(gen_grads)

    disc_params, disc_stats, disc_opt = state.disc_params, state.disc_stats, state.disc_opt
    if gan:
      fake = jax.lax.stop_gradient(out.reconstruction)

      def disc_loss_fn(dp):
        both = jnp.concatenate([images, fake], axis=0)
        logits, new_stats = disc_apply(dp, state.disc_stats, both)
        real_l, fake_l = jnp.split(logits, 2, axis=0)
        loss = lc.disc_weight * hinge_d_loss(real_l, fake_l)
        return loss, (new_stats, real_l.mean(), fake_l.mean())

      (d_loss, (disc_stats, real_mean, fake_mean)), d_grads = jax.value_and_grad(
          disc_loss_fn, has_aux=True)(state.disc_params)
      d_updates, disc_opt = self.disc_tx.update(d_grads, state.disc_opt, state.disc_params)
      disc_params = optax.apply_updates(state.disc_params, d_updates)
      metrics.update(disc_loss=d_loss, logits_real=real_mean, logits_fake=fake_mean,
                     disc_grad_norm=optax.tree.norm(d_grads))

    ema = state.ema_params
    if ema is not None:
      d = c.optim.ema_decay
      ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, gen_params)

    codes = out.indices.reshape(-1)
    recent = jnp.concatenate([state.recent_codes, codes])[-USAGE_BUFFER:]
    metrics.update(
        lr=self.gen_schedule(state.step),
        codebook_usage=codebook_usage(recent, c.model.codebook_size),
        code_perplexity=code_perplexity(codes, c.model.codebook_size),
        psnr=psnr(out.reconstruction, images),
    )
    new_state = dataclasses.replace(
        state, step=state.step + 1, gen_params=gen_params, gen_opt=gen_opt,
        disc_params=disc_params, disc_stats=disc_stats, disc_opt=disc_opt, ema_params=ema,
        recent_codes=recent)
    return new_state, metrics

  # --- inference helpers ----------------------------------------------------------------------
  def jitted_reconstruct(self):
    """(params, images) -> (reconstructions clipped to [-1, 1], code indices)."""
    def fn(params, images):
      out = self.generator(params)(images)
      return jnp.clip(out.reconstruction, -1.0, 1.0), out.indices
    return jax.jit(fn)
