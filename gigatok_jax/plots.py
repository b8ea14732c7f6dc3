"""Small PNG charts drawn with Pillow (no plotting library in the install): quality against the
number of tokens for nested-dropout tokenizers (`--mode=eval`, the demo)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 560, 360
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 64, 24, 36, 52


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
  """Round tick values covering [lo, hi] (steps of 1, 2 or 5 x 10^k)."""
  if hi <= lo:
    hi = lo + 1.0
  raw = (hi - lo) / count
  step = 10 ** math.floor(math.log10(raw))
  step *= next(m for m in (1, 2, 5, 10) if m * step >= raw)
  first = math.floor(lo / step) * step
  return [first + i * step for i in range(int(math.ceil((hi - first) / step)) + 1)]


def tokens_plot(num_tokens: Sequence[int], values: Sequence[float], *, y_label: str,
                title: str) -> np.ndarray:
  """uint8 (H, W, 3) line chart of `values` against `num_tokens` on a log2 axis."""
  xs = [math.log2(n) for n in num_tokens]
  ticks_y = _nice_ticks(min(values), max(values))
  y_lo, y_hi = ticks_y[0], ticks_y[-1]
  x_lo, x_hi = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
  image = Image.new("RGB", (WIDTH, HEIGHT), "white")
  draw = ImageDraw.Draw(image)
  font = ImageFont.load_default()
  left, right = MARGIN_LEFT, WIDTH - MARGIN_RIGHT
  top, bottom = MARGIN_TOP, HEIGHT - MARGIN_BOTTOM

  def px(x: float, y: float) -> tuple[float, float]:
    return (left + (x - x_lo) / (x_hi - x_lo) * (right - left),
            bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top))

  for y in ticks_y:
    _, yy = px(x_lo, y)
    draw.line([(left, yy), (right, yy)], fill=(225, 225, 225))
    draw.text((left - 6, yy), f"{y:g}", fill="black", font=font, anchor="rm")
  for n, x in zip(num_tokens, xs):
    xx, _ = px(x, y_lo)
    draw.line([(xx, top), (xx, bottom)], fill=(235, 235, 235))
    draw.text((xx, bottom + 6), str(n), fill="black", font=font, anchor="mt")
  draw.rectangle([left, top, right, bottom], outline="black")
  points = [px(x, y) for x, y in zip(xs, values)]
  draw.line(points, fill=(31, 119, 180), width=2)
  for (xx, yy), v in zip(points, values):
    draw.ellipse([xx - 3, yy - 3, xx + 3, yy + 3], fill=(31, 119, 180))
  draw.text(((left + right) / 2, HEIGHT - 18), "tokens decoded (log scale)", fill="black",
            font=font, anchor="mm")
  draw.text((8, top - 18), y_label, fill="black", font=font)
  draw.text(((left + right) / 2, 12), title, fill="black", font=font, anchor="mm")
  return np.asarray(image)
