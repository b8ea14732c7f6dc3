"""Metric computations, apart from the modes that run them: FID / sFID statistics and reference
batches (`fid.py`), the Inception Score (`inception_score.py`), precision/recall
(`precision_recall.py`), one evaluation protocol end to end (`evaluator.py`, docs/evaluation.md),
PSNR / SSIM (`image.py`), codebook statistics (`codes.py`), and frozen evaluation networks run
data-parallel over every device (`sharded.py`)."""
