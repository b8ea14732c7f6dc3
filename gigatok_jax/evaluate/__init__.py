"""Evaluation suite: the statistics behind the numbers GigaTok reports.

  fid.py            streaming feature mean/covariance, Frechet distance (FID and sFID), Inception Score,
                    k-NN precision/recall (as the ADM evaluator computes them), the ADM reference-batch
                    `.npz` format and sha256 provenance of reference files. numpy/scipy only.
  image_metrics.py  per-image PSNR and SSIM on uint8 (or [-1, 1] float) NHWC batches, matching skimage.

The Inception network that turns images into features lives elsewhere; everything here starts from features.
"""
