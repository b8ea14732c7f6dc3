"""The model builder: abstract models, their parameter shapes and shardings, no training objects.

Every consumer of a model starts here: the training tasks (which add optimizer state on top),
inference modes (which restore weights into `spec.abstract` and run `spec.merge(params)`), the
summary, the converters and the ahead-of-time planner. Nothing is allocated: the module is built
under `nnx.eval_shape`, so the 2.9B recipe costs a few seconds and no memory.

  spec = build.tokenizer(config, mesh)         # or build.gpt / build.discriminator / build.generator
  spec.abstract      pure dict of jax.ShapeDtypeStruct, each with its NamedSharding (mesh given)
  spec.shardings     the same tree of NamedShardings (None without a mesh)
  spec.make(seed)    a concrete module (inside a jit: initialises straight into the shardings)
  spec.merge(p)      the module around parameters `p` (and `stats` for the discriminator)

Build outside `jax.set_mesh`: under a mesh context, abstract construction would read the logical
axis names as mesh axes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
from flax import nnx

from gigatok_jax import parallel


def axis_rules(config) -> tuple[tuple[Any, ...], ...]:
  """`config.mesh.axis_rules` as the hashable tuple of tuples the sharding helpers take."""
  return tuple(tuple(r) for r in config.mesh.axis_rules)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """One model, abstractly: how to make it, its graph, its parameter (and statistics) shapes."""
  make: Callable[[int], nnx.Module]
  graphdef: Any
  abstract: Any                  # pure dict of ShapeDtypeStruct (nnx.Param leaves)
  shardings: Any                 # pure dict of NamedSharding, or None without a mesh
  stats: Any = None              # BatchStat leaves (the discriminator), else None
  stats_shardings: Any = None

  @property
  def num_params(self) -> int:
    return sum(x.size for x in jax.tree.leaves(self.abstract))

  def merge(self, params, stats=None) -> nnx.Module:
    """The module with weights `params` (and BatchNorm statistics `stats` where it has them)."""
    return nnx.merge(self.graphdef, params, *(() if stats is None else (stats,)))

  def init(self, seed: int) -> tuple[Any, Any]:
    """(params, stats) pure dicts of a fresh module; call inside a jit (no host copy)."""
    module = self.make(seed)
    params = nnx.to_pure_dict(nnx.state(module, nnx.Param))
    stats = nnx.to_pure_dict(nnx.state(module, nnx.BatchStat)) if self.stats is not None else None
    return params, stats


def _with_shardings(tree, shardings):
  return jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                      tree, shardings)


def spec_of(make: Callable[[int], nnx.Module], mesh=None, rules=(), *,
            with_stats: bool = False) -> ModelSpec:
  """The ModelSpec of the module `make(seed)` builds, sharded on `mesh` by `rules` if given."""
  module = nnx.eval_shape(lambda: make(0))
  if with_stats:
    graphdef, params, stats = nnx.split(module, nnx.Param, nnx.BatchStat)
  else:
    graphdef, params = nnx.split(module, nnx.Param)
    stats = None
  trees = [params] + ([stats] if with_stats else [])
  if mesh is None:
    pure = [nnx.to_pure_dict(t) for t in trees]
    shards = [None] * len(trees)
  else:
    shards = [parallel.state_shardings(t, mesh, rules) for t in trees]
    pure = [_with_shardings(nnx.to_pure_dict(t), sh) for t, sh in zip(trees, shards)]
  return ModelSpec(make=make, graphdef=graphdef, abstract=pure[0], shardings=shards[0],
                   stats=pure[1] if with_stats else None,
                   stats_shardings=shards[1] if with_stats else None)


def tokenizer(config, mesh=None) -> ModelSpec:
  """The tokenizer (encoder, quantizer, decoder, semantic projector) of a tokenizer recipe."""
  from gigatok_jax.models.tokenizer import Tokenizer  # pylint: disable=import-outside-toplevel
  return spec_of(lambda seed: Tokenizer(config.model, config.data.image_size, rngs=nnx.Rngs(seed)),
                 mesh, axis_rules(config))


def discriminator(config, mesh=None) -> ModelSpec:
  """The discriminator of a tokenizer recipe (parameters + state): PatchGAN (BatchNorm running
  statistics) or the DINO discriminator's trained heads (spectral-norm vectors; its frozen backbone
  is a teacher, train/teachers.py)."""
  from gigatok_jax.models import dino_discriminator  # pylint: disable=import-outside-toplevel
  from gigatok_jax.models.discriminator import PatchGANDiscriminator  # pylint: disable=import-outside-toplevel
  d = config.discriminator
  if d.get("kind", "patchgan") == "dinodisc":
    return spec_of(lambda seed: dino_discriminator.DinoDiscriminatorHeads(
        rngs=nnx.Rngs(seed), kernel_size=d.kernel_size, depth=d.depth), mesh, axis_rules(config), with_stats=True)
  return spec_of(lambda seed: PatchGANDiscriminator(ndf=d.ndf, n_layers=d.n_layers,
                                                    rngs=nnx.Rngs(seed)),
                 mesh, axis_rules(config), with_stats=True)


def gpt(config, mesh=None) -> ModelSpec:
  """The class-conditional GPT of a GPT recipe."""
  from gigatok_jax.models.gpt import GPT  # pylint: disable=import-outside-toplevel
  return spec_of(lambda seed: GPT(config.model, rngs=nnx.Rngs(seed)), mesh, axis_rules(config))


def generator(config, mesh=None) -> ModelSpec:
  """The model a recipe trains and serves: its GPT, or its tokenizer."""
  return gpt(config, mesh) if config.get("task") == "gpt" else tokenizer(config, mesh)
