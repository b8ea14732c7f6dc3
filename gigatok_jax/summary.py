"""`--mode=summary`: the parameter overview of a recipe from abstract shapes only (no allocation)."""

from __future__ import annotations

import jax
from flax import nnx

from gigatok_jax.models.discriminator import PatchGANDiscriminator
from gigatok_jax.models.tokenizer import Tokenizer


def count_tree(state) -> int:
  return sum(x.size for x in jax.tree.leaves(state))


def abstract_params(config):
  gen = nnx.eval_shape(lambda: Tokenizer(config.model, config.data.image_size, rngs=nnx.Rngs(0)))
  d = config.discriminator
  disc = nnx.eval_shape(lambda: PatchGANDiscriminator(ndf=d.ndf, n_layers=d.n_layers,
                                                      rngs=nnx.Rngs(0)))
  return nnx.state(gen, nnx.Param), nnx.state(disc, nnx.Param)


def abstract_gpt_params(config):
  from gigatok_jax.models.gpt import GPT  # pylint: disable=import-outside-toplevel
  return nnx.state(nnx.eval_shape(lambda: GPT(config.model, rngs=nnx.Rngs(0))), nnx.Param)


def summarize(config, depth: int = 2) -> str:
  """A table of parameter counts per module (to `depth` levels) and totals."""
  if config.get("task") == "gpt":
    gen, disc = abstract_gpt_params(config), None
  else:
    gen, disc = abstract_params(config)
  rows: list[tuple[str, int]] = []

  def walk(tree, prefix, level):
    # Numbered children (layers) in numeric order; top-level tensors (embeddings) get a row too.
    for name in sorted(tree.keys(), key=lambda k: (isinstance(k, str), k if isinstance(k, str) else int(k))):
      sub = tree[name]
      path = f"{prefix}{name}"
      if isinstance(sub, dict) or level == 0:
        rows.append((("  " * level) + path.split("/")[-1], count_tree(sub)))
      if isinstance(sub, dict) and level + 1 < depth:
        walk(sub, path + "/", level + 1)

  pure = nnx.to_pure_dict(gen)
  walk(pure, "", 0)
  total = count_tree(pure)
  m = config.model
  if disc is None:
    head = (f"GPT ({m.position}): {m.width} wide, {m.layers} layers, {m.heads} heads, vocabulary "
            f"{m.vocab_size}, {m.num_tokens} tokens, {m.num_classes} classes (+ null)")
  else:
    head = (f"tokenizer ({m.kind}): enc {m.enc_width}x{m.enc_layers} ({m.enc_heads} heads), "
            f"dec {m.dec_width}x{m.dec_layers} ({m.dec_heads} heads), codebook "
            f"{m.codebook_size}x{m.code_dim}, image {config.data.image_size}px")
  width = max(len(r[0]) for r in rows) + 2
  lines = [head, f"{'module':<{width}}{'params':>16}{'share':>8}"]
  for name, n in rows:
    lines.append(f"{name:<{width}}{n:>16,}{100 * n / total:>7.1f}%")
  lines.append(f"{'total' if disc is None else 'generator total':<{width}}{total:>16,}  "
               f"({total / 1e6:.1f}M, {total * 4 / 2**30:.2f} GiB in float32)")
  if disc is None:
    return "\n".join(lines)
  nd = count_tree(disc)
  lines.append(f"{'discriminator':<{width}}{nd:>16,}  ({nd / 1e6:.2f}M)")
  return "\n".join(lines)
