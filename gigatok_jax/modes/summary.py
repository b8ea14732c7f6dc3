"""`--mode=summary`: the parameter overview of a recipe from abstract shapes only (no allocation)."""

from __future__ import annotations

import jax

from gigatok_jax import build
from gigatok_jax.models.tokenizer import num_tokens


def count_tree(state) -> int:
  return sum(x.size for x in jax.tree.leaves(state))


def run(config, workdir=None, *, progress: bool = True, options=None) -> str:
  del workdir, progress, options
  text = summarize(config)
  print(text)
  return text


def summarize(config, depth: int = 2) -> str:
  """A table of parameter counts per module (to `depth` levels) and totals."""
  gen = build.generator(config).abstract
  disc = None if config.get("task") == "gpt" else build.discriminator(config).abstract
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

  pure = gen
  walk(pure, "", 0)
  total = count_tree(pure)
  m = config.model
  if disc is None:
    head = (f"GPT ({m.position}): {m.width} wide, {m.layers} layers, {m.heads} heads, vocabulary "
            f"{m.vocab_size}, {m.num_tokens} tokens, {m.num_classes} classes (+ null)")
  else:
    quantizer = m.get("quantizer", "vq")
    codes = (f"FSQ levels {tuple(m.fsq_levels)} = {m.codebook_size} codes" if quantizer == "fsq"
             else f"{quantizer.upper()} codebook {m.codebook_size}x{m.code_dim}")
    head = (f"tokenizer ({m.kind}): enc {m.enc_width}x{m.enc_layers} ({m.enc_heads} heads), "
            f"dec {m.dec_width}x{m.dec_layers} ({m.dec_heads} heads), {codes}, image "
            f"{config.data.image_size}px -> {num_tokens(m, config.data.image_size)} tokens"
            + (f" (nested dropout: decodes from {m.nested_dropout[0]}..{m.nested_dropout[-1]})"
               if m.get("nested_dropout", ()) else ""))
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
