"""Codebook statistics of a tokenizer's code indices, from a histogram over an evaluation set."""

from __future__ import annotations

import numpy as np


def code_statistics(histogram: np.ndarray) -> dict[str, float]:
  """Usage (fraction of codes used at least once) and perplexity of a code histogram."""
  total = histogram.sum()
  p = histogram[histogram > 0] / max(total, 1)
  return {"codebook_usage": float((histogram > 0).mean()),
          "codes_used": int((histogram > 0).sum()),
          "code_perplexity": float(np.exp(-(p * np.log(p)).sum())) if total else 0.0}
