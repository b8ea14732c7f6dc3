"""Dotted flat names ("a.b.0.c") for the leaves of parameter pytrees: the one copy.

Converters, checkpoint diagnostics and the model builder all speak of parameters by these names;
list indices (numbered layers) appear as numbers.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np


def path_name(path) -> str:
  """A jax tree path of a pure dict -> our flat "a.b.c" name (list indices as numbers)."""
  return ".".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)


def flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """{name: shape} of every leaf (arrays or ShapeDtypeStructs)."""
  return {path_name(path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def flatten(tree: Any) -> dict[str, np.ndarray]:
  """{name: numpy array} of every leaf."""
  return {path_name(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflatten(flat: Mapping[str, np.ndarray], like: Any) -> Any:
  """Our flat "a.b.c" arrays as the nested pure dict `like` (a pytree with the same leaves)."""
  paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(like)[0]]
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like),
                                      [flat[path_name(path)] for path in paths])


def module_names(module) -> dict[str, Any]:
  """{name: nnx.Param variable} of an nnx module, named like the pure-dict leaves above."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  return {".".join(str(p) for p in path): var
          for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param))}
