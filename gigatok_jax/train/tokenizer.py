"""The tokenizer train state and its one jitted train step (generator + discriminator).

`TokenizerTask` builds the models abstractly, derives every sharding from the logical axis names,
initialises the state directly into its shardings, and compiles `train_step(state, batch)` with
in/out shardings and donation. The loss phase is static: before `loss.disc_start_step` the step
neither runs the discriminator nor updates it, and the auxiliary losses run only before
`loss.aux_loss_end`; each phase is its own executable, compiled when the run reaches it.

Generator loss (docs/spec.md §3.1):  w_rec * L2 + w_cb * vq + commit + w_ent * entropy + w_gan * (-D(fake))
                            + w_perc * LPIPS + w_sem * (-cos(projector(dec layer k), DINOv2))
                            [+ w_feat * MSE(sg(CNN map), decoder map) + L2(+LPIPS)(shortcut) while aux]
The frozen teachers (train/teachers.py) are a third, non-donated argument of the step.
Discriminator loss (docs/spec.md §3.2): w_gan * 0.5 * (mean relu(1 - D(real)) + mean relu(1 + D(fake)))
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from gigatok_jax import build, console, distributed, inference, parallel, runs
from gigatok_jax import images as image_lib
from gigatok_jax.metrics import image as image_metrics
from gigatok_jax.metrics.image import psnr_float
from gigatok_jax.models import diffaug
from gigatok_jax.models.layers import block_output_sharding, constrain_block_output
from gigatok_jax.models.quantizer import codebook_sharding

NESTED_DROPOUT_STREAM = 0x6E64   # fold_in constant of the nested-dropout key ("nd")
from gigatok_jax.models.quantizer import code_perplexity, codebook_usage
from gigatok_jax.models.tokenizer import Tokenizer
from gigatok_jax.train import optim
from gigatok_jax.train.teachers import FrozenTeachers, cosine_similarity

USAGE_BUFFER = 65536  # codebook usage is measured over the last 65536 code indices (docs/spec.md §2.5)


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


def hinge_d_loss(logits_real, logits_fake):
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


class Phase(NamedTuple):
  """The static switches of a tokenizer train step; each phase compiles its own executable."""
  gan: bool = False      # discriminator on (from loss.disc_start_step)
  aux: bool = False      # auxiliary losses on (before loss.aux_loss_end)

  def describe(self) -> str:
    return f"GAN {'on' if self.gan else 'off'}, aux losses {'on' if self.aux else 'off'}"


class TokenizerTask:
  """Everything needed to initialise, shard and step a tokenizer training run: the builder's
  generator and discriminator, their AdamW optimizers on top, and the frozen teachers."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, *,
               random_teachers: bool = False):
    """`random_teachers`: random-weight DINOv2/LPIPS of the right shapes (benchmarks, AOT)."""
    self.config = config
    self.mesh = mesh
    self.rules = build.axis_rules(config)
    c = config
    mask = optim.decay_all if c.optim.get("decay_norms", False) else optim.decay_mask
    self.gen_tx, self.gen_schedule = optim.adamw(
        c.optim, c.total_steps, c.optim.lr, mask=mask,
        cnn_lr_scale=c.optim.get("cnn_lr_scale", 1.0),
        codebook_lr_scale=c.optim.get("codebook_lr_scale", 1.0))
    self.disc_tx, _ = optim.adamw(c.optim, c.total_steps, c.optim.disc_lr, mask=mask)
    self.gen = build.tokenizer(config, mesh)
    self.disc = build.discriminator(config, mesh)

    abstract = jax.eval_shape(self._init_state)
    rep = parallel.replicated(mesh)
    self.state_shardings = TokenizerState(
        step=rep,
        gen_params=self.gen.shardings,
        gen_opt=parallel.optimizer_shardings(self.gen_tx, abstract.gen_opt, self.gen.shardings,
                                             mesh),
        disc_params=self.disc.shardings,
        disc_stats=self.disc.stats_shardings,
        disc_opt=parallel.optimizer_shardings(self.disc_tx, abstract.disc_opt,
                                              self.disc.shardings, mesh),
        ema_params=self.gen.shardings if abstract.ema_params is not None else None,
        recent_codes=rep,
    )
    # The state's shapes with the shardings each array lives in (restore and AOT targets).
    self.abstract_state = jax.tree.map(
        lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
        abstract, self.state_shardings)
    self.num_params = self.gen.num_params
    self.num_disc_params = self.disc.num_params
    self.teachers = FrozenTeachers(config, random_init=random_teachers)
    self.teacher_shardings = self.teachers.shardings(mesh, self.rules)
    self._steps = {}

  def describe(self) -> str:
    return (f"generator {self.num_params / 1e6:.2f}M params, discriminator "
            f"{self.num_disc_params / 1e6:.2f}M params")

  # --- construction ---------------------------------------------------------------------------
  def _init_state(self) -> TokenizerState:
    seed = self.config.seed
    gen_params, _ = self.gen.init(seed)
    disc_params, disc_stats = self.disc.init(seed + 1)
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

  def abstract_extra_args(self) -> tuple[Any, ...]:
    """`load_extra_args()` as shapes with shardings (AOT compiles without loading anything)."""
    return (self.teachers.abstract_args(self.mesh, self.rules),)

  def init_state(self) -> TokenizerState:
    """Initialises parameters directly into their shardings (no host copy of the full model)."""
    with jax.set_mesh(self.mesh):
      return jax.jit(self._init_state, out_shardings=self.state_shardings)()

  def generator(self, params) -> Tokenizer:
    return self.gen.merge(params)

  def abstract_batch(self, batch_size: int | None = None) -> dict[str, jax.ShapeDtypeStruct]:
    """The train batch as shapes with their shardings (default: the global batch size)."""
    n, s = batch_size or self.config.global_batch_size, self.config.data.image_size
    return {"image": jax.ShapeDtypeStruct((n, s, s, 3), jnp.float32,
                                          sharding=parallel.batch_sharding(self.mesh, self.rules, 4)),
            "label": jax.ShapeDtypeStruct((n,), jnp.int32,
                                          sharding=parallel.batch_sharding(self.mesh, self.rules, 1))}

  # --- the train step -------------------------------------------------------------------------
  def phase(self, step: int) -> Phase:
    """The static switches of the step at `step`."""
    lc = self.config.loss
    return Phase(gan=lc.disc_weight > 0 and step >= lc.disc_start_step, aux=step < lc.aux_loss_end)

  def phase_boundaries(self) -> tuple[int, ...]:
    """The steps at which `phase(step)` may change."""
    lc = self.config.loss
    return (lc.aux_loss_end, lc.disc_start_step)

  def steady_phase(self) -> Phase:
    """The phase most of a run spends in (GAN on when it has one, aux losses over): what AOT plans."""
    return Phase(gan=self.config.loss.disc_weight > 0, aux=False)

  def train_step_fn(self, phase: Phase = Phase()):
    """The pure step function (un-jitted) of a phase, for jit here and for AOT lowering elsewhere."""
    gan, aux = phase
    step = functools.partial(self._train_step, gan=gan, aux=aux)

    def constrained_step(*args):
      with block_output_sharding(parallel.batch_axes(self.rules)), \
          codebook_sharding(parallel.similarity_spec(self.rules)):
        return step(*args)
    return constrained_step

  def jitted_train_step(self, phase: Phase = Phase()):
    """The one jitted train step of `phase`: training runs it, `--mode=aot` lowers it."""
    phase = Phase(*phase)
    if phase not in self._steps:
      batch_sh = {k: v.sharding for k, v in self.abstract_batch().items()}
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

    # The DINO discriminator sees augmented images through its frozen backbone, with fresh random
    # draws per call (generator pass, then fake, then real, as the official loss orders them).
    dino = c.discriminator.get("kind", "patchgan") == "dinodisc"
    disc_keys = jax.random.split(jax.random.fold_in(jax.random.key(c.seed), state.step), 3)

    def disc_apply(disc_params, stats, x, key):
      disc = self.disc.merge(disc_params, stats)
      if dino:
        k_aug, k_crop = jax.random.split(key)
        x = constrain_block_output(diffaug.random_augment(x, k_aug))     # batch stays sharded
        x = teachers.dino_disc_readouts(frozen, x, k_crop)
      logits = disc(x, train=True)
      return logits, nnx.to_pure_dict(nnx.state(disc, nnx.BatchStat))

    # Nested dropout: each image keeps a prefix whose length is drawn uniformly from the set; a
    # stream of its own (disc_keys' draws stay those of runs without it).
    lengths = tuple(c.model.get("nested_dropout", ()) or ())
    keep = None
    if lengths:
      key = jax.random.fold_in(jax.random.fold_in(jax.random.key(c.seed), state.step),
                               NESTED_DROPOUT_STREAM)
      keep = jnp.asarray(lengths, jnp.int32)[
          jax.random.randint(key, (images.shape[0],), 0, len(lengths))]      # (B,)

    def gen_loss_fn(gen_params):
      out = self.generator(gen_params)(images, with_entropy=lc.entropy_weight > 0,
                                       with_distill=teachers.semantic,
                                       with_shortcut=aux and lc.shortcut_reconstruction,
                                       keep=keep)
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
      gen_stats = state.disc_stats
      if gan:
        logits_fake, new_stats = disc_apply(state.disc_params, state.disc_stats, out.reconstruction,
                                            disc_keys[0])
        # The spectral norm's power iteration of this call counts (the official module is in
        # training mode here too); PatchGAN's running statistics are left to its own step.
        gen_stats = new_stats if dino else state.disc_stats
        g_adv = -jnp.mean(logits_fake)
        loss = loss + lc.disc_weight * g_adv
        terms["gen_adv_loss"] = g_adv
      terms["gen_loss"] = loss
      return loss, (out, terms, gen_stats)

    (_, (out, metrics, gen_stats)), gen_grads = jax.value_and_grad(
        gen_loss_fn, has_aux=True)(state.gen_params)
    gen_updates, gen_opt = self.gen_tx.update(gen_grads, state.gen_opt, state.gen_params)
    gen_params = optax.apply_updates(state.gen_params, gen_updates)
    metrics["gen_grad_norm"] = optax.tree.norm(gen_grads)

    disc_params, disc_stats, disc_opt = state.disc_params, state.disc_stats, state.disc_opt
    if gan:
      fake = jax.lax.stop_gradient(out.reconstruction)

      def disc_loss_fn(dp):
        if dino:   # two calls, fake then real: two power iterations, groups within each set
          fake_l, new_stats = disc_apply(dp, jax.lax.stop_gradient(gen_stats), fake, disc_keys[1])
          real_l, new_stats = disc_apply(dp, new_stats, images, disc_keys[2])
        else:
          both = jnp.concatenate([images, fake], axis=0)
          logits, new_stats = disc_apply(dp, state.disc_stats, both, disc_keys[1])
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
        psnr=psnr_float(out.reconstruction, images),
    )
    new_state = dataclasses.replace(
        state, step=state.step + 1, gen_params=gen_params, gen_opt=gen_opt,
        disc_params=disc_params, disc_stats=disc_stats, disc_opt=disc_opt, ema_params=ema,
        recent_codes=recent)
    return new_state, metrics

  # --- inference helpers ----------------------------------------------------------------------
  def jitted_reconstruct(self):
    """(params, images) -> (reconstructions clipped to [-1, 1], code indices)."""
    return inference.reconstruct_fn(self.gen)


# --- the training loop's hooks (train/loop.py) ---------------------------------------------------
def grid_data_config(data_cfg):
  """The data config whose eval split feeds the grids: the train shards when no eval_path is set."""
  if data_cfg.source == "array_record" and not data_cfg.eval_path:
    data_cfg = data_cfg.copy_and_resolve_references()
    data_cfg.eval_path = data_cfg.train_path
  return data_cfg


def first_eval_batch(config) -> np.ndarray:
  """The fixed images shown in reconstruction grids (deterministic eval-split center crops)."""
  from gigatok_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  n = config.eval_num_images
  # Every process reads all n images: the reconstruction runs on the global mesh and takes the
  # same (replicated) input everywhere.
  it = pipeline.make_eval_iterator(grid_data_config(config.data), batch_size=n, num_images=n,
                                   process_index=0, process_count=1)
  batch = next(iter(it))
  return batch["image"][batch["mask"]]


class TokenizerHooks:
  """What the loop does for a tokenizer: image batches, teachers, reconstruction grids + PSNR."""
  log_keys = ("gen_loss", "psnr", "codebook_usage")
  log_labels = {"psnr": "train-batch PSNR"}   # the eval PSNR is on the fixed eval images
  tokens_per_image = None

  def __init__(self, task: TokenizerTask):
    self.task = task
    self.config = task.config
    self.eval_images = self.reconstruct = self.images_dir = None
    self.last_eval = None   # (step, PSNR) of the latest grid

  def load_extra_args(self) -> tuple[Any, ...]:
    frozen = self.task.load_teachers()
    for name in self.task.teachers.names:
      console.info(f"frozen {name}: {self.config.teachers[name + '_path']}")
    return (frozen,)

  def train_iterator(self):
    from gigatok_jax.data import pipeline  # pylint: disable=import-outside-toplevel
    return pipeline.make_train_iterator(self.config.data,
                                        global_batch_size=self.config.global_batch_size,
                                        seed=self.config.seed)

  def start(self, state: TokenizerState, step: int, reporter) -> None:
    self.images_dir = runs.images_dir(reporter.workdir)
    self.eval_images = first_eval_batch(self.config)
    self.reconstruct = distributed.StartTogether(self.task.jitted_reconstruct(), "reconstruct",
                                                 self.config)
    if step == 0:
      self.write_grid(state, step, reporter)   # the untrained baseline, for later grids

  def after_step(self, state: TokenizerState, step: int, end: int, reporter) -> None:
    del end
    if step % self.config.image_every_steps == 0 or step == self.config.total_steps:
      self.write_grid(state, step, reporter)

  def write_grid(self, state: TokenizerState, step: int, reporter) -> float:
    """Grid of the fixed eval images + their PSNR (dB, uint8 like image tools), logged as eval_psnr."""
    params = state.ema_params if state.ema_params is not None else state.gen_params
    recon = distributed.gather(self.reconstruct(params, self.eval_images)[0])
    reporter.images(step, "reconstruction", image_lib.comparison_grid(self.eval_images, recon))
    value = float(np.mean(image_metrics.psnr(self.eval_images, recon)))
    reporter.extra_scalars(step, {"eval_psnr": value})
    self.last_eval = (step, value)
    console.info(f"step {step}: eval PSNR {value:.2f} dB on {len(self.eval_images)} fixed eval "
                 f"images")
    return value

  def final_line(self, metrics) -> str:
    text = ""
    if self.last_eval is not None:
      at, value = self.last_eval
      text = (f"eval PSNR {value:.2f} dB on {len(self.eval_images)} fixed eval images"
              f"{'' if at == self.config.total_steps else f' (at step {at})'}; ")
    return (text + f"train-batch PSNR {float(metrics['psnr']):.2f} dB, codebook usage "
            f"{float(metrics['codebook_usage']):.4f}; grids in {self.images_dir}/")
