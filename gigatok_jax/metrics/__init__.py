"""Metric computations, apart from the modes that run them: FID / IS / precision-recall statistics
(`fid.py`), PSNR / SSIM (`image.py`), codebook statistics (`codes.py`), and frozen evaluation
networks run data-parallel over every device (`sharded.py`)."""
