"""Builds an ADM-layout reference batch from an image batch: `python -m gigatok_jax.convert.reference_batch`.

  python -m gigatok_jax.convert.reference_batch --images=batch.npz \
      --inception=fid_inception.safetensors --out=my_reference.npz [--protocol=adm]

The input is an ADM-style image batch (`arr_0`, uint8 (N, H, W, 3), e.g. what `--mode=sample`
writes or a set of real images). The output has `mu`, `sigma` (pool3) and `mu_s`, `sigma_s`
(spatial, for sFID) measured under `--protocol`, a `protocol` entry (ADM's reader ignores it; ours
refuses to compare across protocols), and, unless `--no_images`, a byte-for-byte copy of `arr_0`,
which precision/recall needs. Images are streamed in batches; nothing holds the whole set.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import zipfile

import numpy as np

from gigatok_jax import fileio
from gigatok_jax.errors import EXIT_USER_ERROR, UserError
from gigatok_jax.metrics import evaluator, fid


def build(images: str, inception: str, out: str, *, protocol: str = "adm", batch_size: int = 100,
          with_images: bool = True, measure: evaluator.MeasureFn | None = None) -> dict:
  """Writes the reference batch `out`; returns {"path", "sha256", "num_images", "protocol"}.

  `measure` replaces the Inception network (tests).
  """
  evaluator.check_protocol(protocol)
  if not fileio.isfile(images):
    raise UserError(f"--images: {images} not found")
  try:
    header = fid.read_reference_header(images)
  except (ValueError, zipfile.BadZipFile, OSError) as e:
    raise UserError(f"--images: {images} is not an .npz image batch ({e})") from None
  shape, dtype = header
  if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
    raise UserError(f"--images: {images}: arr_0 must be uint8 (N, H, W, 3), got {dtype} {shape}")
  if shape[0] < 2:
    raise UserError(f"--images: {images}: a covariance needs at least 2 images, got {shape[0]}")
  measure = measure or evaluator.inception_measure(inception, protocol, batch_size)
  features = evaluator.measure_batches(measure, fid.iter_reference_images(images, batch_size))
  stats = features.statistics()
  with fileio.atomic_write(out, "wb") as f:
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
      for key, value in {**stats, "protocol": np.asarray(protocol)}.items():
        with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
          np.lib.format.write_array(member, np.asarray(value))
      if with_images:   # the .npy member copied as bytes: header and data unchanged
        with fileio.open_read(images) as src, zipfile.ZipFile(src) as source, \
             source.open("arr_0.npy") as member_in, \
             archive.open("arr_0.npy", "w", force_zip64=True) as member_out:
          shutil.copyfileobj(member_in, member_out, 1 << 24)
  return {"path": fileio.resolve(out), "sha256": fileio.sha256_file(out),
          "num_images": features.count, "protocol": protocol}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m gigatok_jax.convert.reference_batch",
      description="Measure an image batch (.npz with arr_0) into an ADM-layout reference batch.")
  parser.add_argument("--images", required=True, help="input .npz with arr_0 uint8 (N, H, W, 3)")
  parser.add_argument("--inception", required=True,
                      help="converted FID Inception (python -m gigatok_jax.convert.inception)")
  parser.add_argument("--out", required=True, help="output reference .npz")
  parser.add_argument("--protocol", default="adm", choices=evaluator.PROTOCOLS)
  parser.add_argument("--batch_size", type=int, default=100)
  parser.add_argument("--no_images", action="store_true",
                      help="leave arr_0 out (no precision/recall against this reference)")
  args = parser.parse_args(argv)
  try:
    if not fileio.isfile(args.inception):
      raise UserError(f"--inception: {args.inception} not found")
    info = build(args.images, args.inception, args.out, protocol=args.protocol,
                 batch_size=args.batch_size, with_images=not args.no_images)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_USER_ERROR
  print(f"{info['num_images']} images measured under protocol '{info['protocol']}' -> "
        f"{info['path']} (sha256 {info['sha256'][:16]}...)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
