"""Inception Score from unbiased Inception logits, as the two evaluation protocols compute it.

IS = exp(E_x KL(p(y|x) || p(y))), p(y|x) = softmax(pool3 @ W) without the classifier bias, p(y) the
mean prediction over a part of the set; the score is the mean over parts. The protocols differ only
in how the set is cut (docs/evaluation.md):
  - 'adm' (OpenAI's ADM evaluator): contiguous parts of `split_size` = 5000 rows in the given order,
    the last one shorter; the mean over parts is reported (ADM reports no spread; ours is the std
    over parts for information).
  - 'pytorch_fid' (torch-fidelity's `isc`, the IS that goes with pytorch-fid's FID): rows shuffled
    with numpy `RandomState(2020).permutation`, then 10 parts with boundaries i * N // 10; mean and
    std over parts.
Softmax and logs run in float64 (ADM works in float32; the two agree to ~1e-7 relative).
"""

from __future__ import annotations

import numpy as np
from scipy import special

ADM_SPLIT_SIZE = 5000
TORCH_FIDELITY_SPLITS = 10
TORCH_FIDELITY_SEED = 2020


def part_score(logits: np.ndarray) -> float:
  """exp(mean_i KL(p_i || mean p)) of one part: (n, K) logits -> float."""
  log_p = special.log_softmax(np.asarray(logits, np.float64), axis=1)      # (n, K)
  p = np.exp(log_p)
  # A probability that underflows to 0 contributes its limit, 0 (ADM's float32 arithmetic would
  # give NaN there; with Inception's logits neither underflows in practice).
  with np.errstate(divide="ignore", invalid="ignore"):
    log_marginal = np.log(p.mean(axis=0, keepdims=True))                  # (1, K)
    kl = np.where(p > 0, p * (log_p - log_marginal), 0.0)                   # (n, K)
  return float(np.exp(np.mean(np.sum(kl, axis=1))))


def adm_parts(logits: np.ndarray, split_size: int = ADM_SPLIT_SIZE) -> list[float]:
  """Per-part scores of contiguous parts of `split_size` rows (ADM's `compute_inception_score`)."""
  n = len(logits)
  return [part_score(logits[start:start + split_size]) for start in range(0, n, split_size)]


def torch_fidelity_parts(logits: np.ndarray, splits: int = TORCH_FIDELITY_SPLITS,
                         seed: int = TORCH_FIDELITY_SEED) -> list[float]:
  """Per-part scores of torch-fidelity's `isc`: seeded shuffle, then `splits` parts i*N//splits."""
  n = len(logits)
  shuffled = np.asarray(logits)[np.random.RandomState(seed).permutation(n)]
  return [part_score(shuffled[i * n // splits:(i + 1) * n // splits]) for i in range(splits)]


def inception_score(logits: np.ndarray, protocol: str = "adm", *,
                    split_size: int = ADM_SPLIT_SIZE) -> dict:
  """(N, K) unbiased logits -> {"inception_score", "inception_score_std", "inception_score_parts"}."""
  logits = np.asarray(logits)
  if logits.ndim != 2 or len(logits) == 0:
    raise ValueError(f"logits must be (N, classes) with N > 0, got {logits.shape}")
  if protocol == "adm":
    parts = adm_parts(logits, split_size)
  elif protocol == "pytorch_fid":
    if len(logits) < TORCH_FIDELITY_SPLITS:
      raise ValueError(f"the Inception Score needs at least {TORCH_FIDELITY_SPLITS} images under "
                       f"protocol 'pytorch_fid', got {len(logits)}")
    parts = torch_fidelity_parts(logits)
  else:
    raise ValueError(f"protocol must be 'adm' or 'pytorch_fid', got {protocol!r}")
  return {"inception_score": float(np.mean(parts)), "inception_score_std": float(np.std(parts)),
          "inception_score_parts": len(parts)}
