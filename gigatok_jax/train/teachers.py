"""The frozen networks of tokenizer training: DINOv2 (semantic regularization), LPIPS-VGG, and the
DINO ViT-S/16 backbone of the DINO discriminator (`discriminator.kind = 'dinodisc'`).

They are not part of the train state: their weights come from converted local files named in
`config.teachers`, are placed on the mesh once (sharded by their logical axis names like the
tokenizer), and enter the jitted step as a separate, non-donated argument, so they get no
gradients, no optimizer state and no checkpoint space. They compute in the tokenizer's compute
dtype (bf16 when the model runs in bf16).

A loss weight > 0 is the switch: `loss.semantic_weight > 0` needs `teachers.dinov2_path`,
`loss.perceptual_weight > 0` needs `teachers.lpips_path`, `loss.disc_weight > 0` with the DINO
discriminator needs `teachers.dino_disc_path`. `config/validate.py` (check_teachers)
verifies the files (exist, right model, DINOv2 width == model.distill_dim) before anything
compiles; there is no fallback to random weights in training (`init_random` exists for benchmarks and AOT planning only).
"""

from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from gigatok_jax import parallel
from gigatok_jax.convert import lpips as lpips_convert
from gigatok_jax.convert import weight_files
from gigatok_jax.convert import dino_discriminator as dino_disc_convert
from gigatok_jax.models import dino_discriminator, dinov2, lpips
from gigatok_jax.models.tokenizer import DTYPES, grid_size

PATCH = 14  # DINOv2 patch size: the teacher sees 14 x grid pixels, one patch token per query

CONVERT_HINT = {
    "dinov2": ("python -m gigatok_jax.convert.dinov2 --src=dinov2_vitb14_pretrain.pth "
               "--out=dinov2_vitb14.safetensors"),
    "lpips": ("python -m gigatok_jax.convert.lpips --vgg=vgg16-397923af.pth "
              "--out=lpips_vgg16.safetensors"),
    "dino_disc": ("python -m gigatok_jax.convert.dino_discriminator "
                  "--src=dino_deitsmall16_pretrain.pth --out=dino_vits16.safetensors"),
}
WEIGHT_KEY = {"dinov2": "loss.semantic_weight", "lpips": "loss.perceptual_weight",
              "dino_disc": "loss.disc_weight"}
PATH_KEY = {"dinov2": "teachers.dinov2_path", "lpips": "teachers.lpips_path",
            "dino_disc": "teachers.dino_disc_path"}
MODEL_NAME = {"dinov2": dinov2.MODEL_NAME, "lpips": lpips_convert.MODEL_NAME,
              "dino_disc": dino_disc_convert.dd.MODEL_NAME}


def active(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Names of the teachers a config uses, in a fixed order."""
  out = []
  if config.loss.semantic_weight > 0:
    out.append("dinov2")
  if config.loss.perceptual_weight > 0:
    out.append("lpips")
  if config.discriminator.get("kind", "patchgan") == "dinodisc" and config.loss.disc_weight > 0:
    out.append("dino_disc")
  return tuple(out)


class FrozenTeachers:
  """Builds the active teachers abstractly; loads or randomly initialises their parameters."""

  def __init__(self, config: ml_collections.ConfigDict, *, random_init: bool = False):
    self.config = config
    self.names = active(config)
    self.dtype = DTYPES[config.model.dtype]
    self.grid = grid_size(config.model, config.data.image_size)
    self.random_init = random_init
    self._graphs: dict[str, Any] = {}
    self._states: dict[str, Any] = {}       # abstract nnx.State (carries the logical axis names)
    self.abstract: dict[str, Any] = {}      # the same as pure dicts of ShapeDtypeStructs
    for name in self.names:
      module = nnx.eval_shape(lambda n=name: self._build(n, seed=0))
      graph, params = nnx.split(module, nnx.Param)
      self._graphs[name] = graph
      self._states[name] = params
      self.abstract[name] = nnx.to_pure_dict(params)

  @property
  def semantic(self) -> bool:
    return "dinov2" in self.names

  @property
  def perceptual(self) -> bool:
    return "lpips" in self.names

  def _dinov2_config(self) -> "dinov2.DinoV2Config":
    if self.random_init:  # DINOv2-B/14 shapes, stored pos_embed already on the tokenizer grid
      return dinov2.DinoV2Config.from_variant("vitb14", pos_grid=self.grid)
    meta = weight_files.read_metadata(self.config.teachers.dinov2_path)
    return dinov2.DinoV2Config(**json.loads(meta["config"]))

  def _build(self, name: str, seed: int) -> nnx.Module:
    rngs = nnx.Rngs(seed)
    if name == "dinov2":
      return dinov2.DinoV2(self._dinov2_config(), rngs=rngs, dtype=self.dtype)
    if name == "dino_disc":
      return dino_discriminator.DinoViTSmall(rngs=rngs, dtype=self.dtype,
                                             depth=self.config.discriminator.depth)
    return lpips.LPIPS(rngs=rngs, dtype=self.dtype)

  # --- parameters -------------------------------------------------------------------------------
  def shardings(self, mesh: jax.sharding.Mesh, rules) -> dict[str, Any]:
    return {n: parallel.state_shardings(a, mesh, rules) for n, a in self._states.items()}

  def abstract_args(self, mesh, rules) -> dict[str, Any]:
    """ShapeDtypeStructs with shardings, for lowering the step without loading any weights."""
    sh = self.shardings(mesh, rules)
    return {n: jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            self.abstract[n], sh[n]) for n in self.names}

  def load(self, mesh: jax.sharding.Mesh, rules) -> dict[str, Any]:
    """Reads the converted files and places the weights on the mesh."""
    if self.random_init:
      raise ValueError("FrozenTeachers(random_init=True) has no files to load; use init_random")
    sh = self.shardings(mesh, rules)
    out = {}
    for name in self.names:
      path = self.config.teachers[name + "_path"]
      flat, _ = weight_files.load_flat(path, expect_model=MODEL_NAME[name])
      module = weight_files.module_from_flat(nnx.merge(self._graphs[name], self._states[name]),
                                             flat, path)
      out[name] = jax.device_put(nnx.to_pure_dict(nnx.state(module, nnx.Param)), sh[name])
    return out

  def init_random(self, mesh: jax.sharding.Mesh, rules, seed: int = 0) -> dict[str, Any]:
    """Random weights of the right shapes: for benchmarks and tests of the wiring only."""
    sh = self.shardings(mesh, rules)
    out = {}
    for name in self.names:
      init = jax.jit(lambda n=name: nnx.to_pure_dict(nnx.state(self._build(n, seed), nnx.Param)),
                     out_shardings=sh[name])
      with jax.set_mesh(mesh):
        out[name] = init()
    return out

  # --- losses (inside the jitted step) ----------------------------------------------------------
  def semantic_target(self, params: dict[str, Any], images: jax.Array) -> jax.Array:
    """(B, H, W, 3) images in [-1, 1] -> (B, grid*grid, D) normalised DINOv2 patch tokens."""
    model = nnx.merge(self._graphs["dinov2"], params["dinov2"])
    x = dinov2.teacher_input(images, size=PATCH * self.grid)
    return jax.lax.stop_gradient(model(x.astype(self.dtype)).patch_tokens.astype(jnp.float32))

  def dino_disc_readouts(self, params: dict[str, Any], images: jax.Array,
                         key: jax.Array) -> list[jax.Array]:
    """The DINO discriminator's backbone on [-1, 1] images (random crop or resize to 224, as the
    official): five (B, 196, 384) readouts; gradients flow to the images."""
    model = nnx.merge(self._graphs["dino_disc"], params["dino_disc"])
    return model(dino_discriminator.random_backbone_input(images, key).astype(self.dtype))

  def perceptual_loss(self, params: dict[str, Any], x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean LPIPS distance between image batches in [-1, 1] (gradients flow to x and y only)."""
    model = nnx.merge(self._graphs["lpips"], params["lpips"])
    return jnp.mean(model(x.astype(self.dtype), y.astype(self.dtype)).astype(jnp.float32))


def cosine_similarity(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
  """Mean over all tokens and the batch of the per-token cosine similarity; (B, N, D) inputs.

  Like torch F.cosine_similarity: each norm is clamped at eps.
  """
  a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  na = jnp.maximum(jnp.linalg.norm(a, axis=-1), eps)
  nb = jnp.maximum(jnp.linalg.norm(b, axis=-1), eps)
  return jnp.mean(jnp.sum(a * b, axis=-1) / (na * nb))
