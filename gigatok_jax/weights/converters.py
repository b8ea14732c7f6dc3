"""The converter adapters of the built-in artefacts, `fn(src_paths, out_path)` each: DINOv2-B/14
(pos_embed resized to 16x16, as GigaTok does), LPIPS-VGG16 (torchvision trunk + the lpips heads)
and pytorch-fid's InceptionV3, from their PyTorch files to gigatok_jax `.safetensors` files. The
registry names them "gigatok_jax.weights:convert_..." (the package re-exports them); the
gigatok_jax.convert modules that do the work, and torch, are imported only when one runs.
"""

from __future__ import annotations

from gigatok_jax.weights.registry import WeightsError

DINOV2_POS_GRID = 16   # GigaTok resizes DINOv2's 37x37 pos_embed once to 16x16 (224 px input)


def convert_dinov2_vitb14(src_paths: list[str], out_path: str) -> None:
  """torch hub DINOv2-B/14 -> our file, pos_embed resized to DINOV2_POS_GRID (as GigaTok does)."""
  from gigatok_jax.convert import dinov2, weight_files
  sd = weight_files.read_torch_state_dict(src_paths[0])
  config = dinov2.infer_config(sd)
  want = dinov2.DINOV2_VARIANTS["vitb14"]
  if (config.variant, config.depth, config.num_registers) != ("vitb14", want.depth, 0):
    raise WeightsError(f"{src_paths[0]}: holds DINOv2 {config.variant} with {config.depth} blocks "
                       f"and {config.num_registers} registers, not vitb14 ({want.depth} blocks)")
  flat = dinov2.convert_state_dict(sd, config)
  if config.pos_grid != DINOV2_POS_GRID:
    flat, config = dinov2.resize_flat_pos_embed(flat, config, DINOV2_POS_GRID)
  dinov2.check_fits_model(flat, config)
  weight_files.save_flat(out_path, flat, metadata={"model": dinov2.MODEL_NAME,
                                                   "config": config.to_json_dict()})


def convert_lpips_vgg16(src_paths: list[str], out_path: str) -> None:
  """torchvision VGG16 + the LPIPS heads of the installed `lpips` wheel (or src_paths[1])."""
  from gigatok_jax.convert import lpips, weight_files
  heads = src_paths[1] if len(src_paths) > 1 else lpips.default_heads_path()
  flat = lpips.convert(weight_files.read_torch_state_dict(src_paths[0]),
                       weight_files.read_torch_state_dict(heads))
  weight_files.save_flat(out_path, flat, metadata={"model": lpips.MODEL_NAME})


def convert_fid_inception(src_paths: list[str], out_path: str) -> None:
  """pytorch-fid's InceptionV3 -> our file."""
  from gigatok_jax.convert import inception, weight_files
  flat = inception.convert(weight_files.read_torch_state_dict(src_paths[0]))
  weight_files.save_flat(out_path, flat, metadata={"model": inception.MODEL_NAME})


def convert_dino_vits16(src_paths: list[str], out_path: str) -> None:
  """DINO ViT-S/16 (dino_deitsmall16_pretrain.pth) -> the DINO discriminator's backbone file."""
  from gigatok_jax.convert import dino_discriminator, weight_files
  flat = dino_discriminator.backbone_from_torch(weight_files.read_torch_state_dict(src_paths[0]),
                                                src_paths[0])
  weight_files.save_flat(out_path, flat, metadata={"model": dino_discriminator.dd.MODEL_NAME})
