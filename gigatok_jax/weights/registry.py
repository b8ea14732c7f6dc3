"""The artefact registry: what a named pretrained artefact is and the built-in pinned entries.

`SourceFile` (one file, its download sources and its sha256 pin) and `Artefact` (its source files,
the "module:function" converter and the output name) describe an artefact; `register`,
`unregister`, `list_artefacts` and `get_artefact` keep the table of them; `WeightsError` is the
package's one error type. Defining an entry downloads or imports nothing: the converters of the
built-in entries are dotted strings, imported only when a conversion runs.
"""

from __future__ import annotations

import dataclasses
import os
import re

from gigatok_jax.errors import CheckpointError

HEX = re.compile(r"[0-9a-f]+")   # a lowercase hex digest (use with fullmatch)


class WeightsError(CheckpointError):
  """An artefact cannot be resolved: missing offline, unpinned, bad hash, failed download."""


@dataclasses.dataclass(frozen=True)
class SourceFile:
  """One file an artefact is converted from.

  `sources` are tried in order: `https://...` URLs or `hf://owner/repo[@revision]/path/in/repo`.
  `sha256` is the full hex digest where known; `sha256_prefix` the leading hex digits a
  torch-hub-style file name embeds. Neither set means unpinned (see the package docstring).
  """
  filename: str
  sources: tuple[str, ...] = ()
  sha256: str | None = None
  sha256_prefix: str | None = None

  def __post_init__(self):
    object.__setattr__(self, "sources", tuple(self.sources))
    if not self.filename or os.path.basename(self.filename) != self.filename:
      raise ValueError(f"SourceFile.filename must be a bare file name, got {self.filename!r}")
    for field, value, full in (("sha256", self.sha256, True),
                               ("sha256_prefix", self.sha256_prefix, False)):
      if value is not None and not (HEX.fullmatch(value) and
                                    (len(value) == 64 if full else 0 < len(value) <= 64)):
        raise ValueError(f"{self.filename}: {field} must be lowercase hex, got {value!r}")

  @property
  def pinned(self) -> bool:
    return bool(self.sha256 or self.sha256_prefix)


@dataclasses.dataclass(frozen=True)
class Artefact:
  """A named pretrained artefact: its source files, how to convert them and what comes out.

  `converter` is "module:function" with signature `fn(src_paths: list[str], out_path: str)`, which
  must create `out_path` (a file or a directory); it is imported only when a conversion runs.
  `former_converters` are names the same conversion was recorded under before a rename: cache
  records that carry one of them still count as hits (weights/cache.py).
  """
  name: str
  files: tuple[SourceFile, ...]
  converter: str
  output: str
  description: str = ""
  how_to_get: str = ""
  former_converters: tuple[str, ...] = ()

  def __post_init__(self):
    object.__setattr__(self, "files", tuple(self.files))
    object.__setattr__(self, "former_converters", tuple(self.former_converters))
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name) or self.name == "downloads":
      raise ValueError(f"bad artefact name {self.name!r}")
    if not self.files:
      raise ValueError(f"{self.name}: an artefact needs at least one source file")
    if not re.fullmatch(r"[\w.]+:\w+", self.converter):
      raise ValueError(f"{self.name}: converter must be 'module:function', got {self.converter!r}")
    if not self.output or os.path.basename(self.output) != self.output:
      raise ValueError(f"{self.name}: output must be a bare file name, got {self.output!r}")


_REGISTRY: dict[str, Artefact] = {}


def register(artefact: Artefact, *, replace: bool = False) -> Artefact:
  """Adds an artefact to the registry (tests and users can add their own)."""
  if artefact.name in _REGISTRY and not replace:
    raise ValueError(f"artefact {artefact.name!r} is already registered (pass replace=True)")
  _REGISTRY[artefact.name] = artefact
  return artefact


def unregister(name: str) -> None:
  _REGISTRY.pop(name, None)


def list_artefacts() -> list[Artefact]:
  return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get_artefact(name: str | Artefact) -> Artefact:
  if isinstance(name, Artefact):
    return name
  if name not in _REGISTRY:
    raise WeightsError(f"unknown pretrained artefact '{name}'; known: "
                       f"{', '.join(sorted(_REGISTRY))}")
  return _REGISTRY[name]


# ------------------------------------------------------------------------------ built-in artefacts
# The converters are named through the package (gigatok_jax.weights, which re-exports them from
# converters.py), not the submodule: the name is part of every cache record and of its hit check,
# so entries converted before the package split stay hits.

register(Artefact(
    name="dinov2_vitb14",
    files=(SourceFile("dinov2_vitb14_pretrain.pth", (
        "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth",)),),
    converter="gigatok_jax.weights:convert_dinov2_vitb14", output="dinov2_vitb14.safetensors",
    description="DINOv2 ViT-B/14 (torch hub), pos_embed resized to 16x16: the semantic teacher",
    how_to_get="the facebookresearch/dinov2 torch hub file; no sha256 is published with it"))
register(Artefact(
    name="lpips_vgg16",
    files=(SourceFile("vgg16-397923af.pth",
                      ("https://download.pytorch.org/models/vgg16-397923af.pth",),
                      sha256_prefix="397923af"),),
    converter="gigatok_jax.weights:convert_lpips_vgg16", output="lpips_vgg16.safetensors",
    description="LPIPS-VGG: torchvision VGG16 trunk + the lpips v0.1 heads (from the lpips wheel)",
    how_to_get="torchvision's ImageNet VGG16; the heads need `pip install --no-deps lpips==0.1.4`"))
register(Artefact(
    name="fid_inception",
    files=(SourceFile("pt_inception-2015-12-05-6726825d.pth", (
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
        "pt_inception-2015-12-05-6726825d.pth",), sha256_prefix="6726825d"),),
    converter="gigatok_jax.weights:convert_fid_inception", output="fid_inception.safetensors",
    description="the FID InceptionV3 (2015-12-05 TF graph; both eval protocols)",
    how_to_get="the pytorch-fid GitHub release fid_weights"))

register(Artefact(
    name="dino_vits16",
    files=(SourceFile("dino_deitsmall16_pretrain.pth", (
        "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/"
        "dino_deitsmall16_pretrain.pth",)),),
    converter="gigatok_jax.weights:convert_dino_vits16", output="dino_vits16.safetensors",
    description="DINO ViT-S/16: the frozen backbone of the DINO discriminator (dinodisc)",
    how_to_get="the facebookresearch/dino release the official discriminator downloads; no "
               "sha256 is published with it"))

_GIGATOK_REPO = "YuuTennYi/GigaTok"   # unverified: a fork points there (docs/spec.md §6)
_GIGATOK_HINT = ("also linked (Google Drive) from the GigaTok README at "
                 "github.com/SilentView/GigaTok; the Hugging Face repo and file name are "
                 "unverified and no sha256 is known")


# One adapter converts every gigatok_* file (tokenizer or GPT: the file says which). Cache records
# written before the converters were split name it convert.gigatok:convert_{kind}_file.
def _gigatok(name: str, filename: str, kind: str, description: str) -> None:
  register(Artefact(
      name=name, files=(SourceFile(filename, (f"hf://{_GIGATOK_REPO}/{filename}",)),),
      converter="gigatok_jax.convert.release:convert_release_file", output="run",
      description=description, how_to_get=_GIGATOK_HINT,
      former_converters=(f"gigatok_jax.convert.gigatok:convert_{kind}_file",)))


for _name, _file, _desc in (
    ("gigatok_ss", "VQ_SS256_e100.pt", "GigaTok S-S tokenizer (136M)"),
    ("gigatok_sb", "VQ_SB256_e200.pt", "GigaTok S-B tokenizer (232M)"),
    ("gigatok_bl", "VQ_BL256_e200.pt", "GigaTok B-L tokenizer (622M)"),
    ("gigatok_bl_dino_disc", "VQ_BL256_dino_disc.pt", "GigaTok B-L tokenizer, DINO discriminator"),
    ("gigatok_xlxxl", "VQ_XLXXL256_e300.pt", "GigaTok XL-XXL tokenizer (2.9B)")):
  _gigatok(_name, _file, "tokenizer", _desc)
for _name, _file, _desc in (
    ("gigatok_gpt_b_ss", "GPT_B256_e300_VQ_SS.pt", "GPT-B on the S-S tokenizer's codes"),
    ("gigatok_gpt_b_sb", "GPT_B256_e300_VQ_SB.pt", "GPT-B on the S-B tokenizer's codes"),
    ("gigatok_gpt_b_bl", "GPT_B256_e300_VQ_BL.pt", "GPT-B on the B-L tokenizer's codes"),
    ("gigatok_gpt_xl_bl", "GPT_XL256_e300_VQ_BL.pt", "GPT-XL on the B-L tokenizer's codes"),
    ("gigatok_gpt_xxl_bl", "GPT_XXL256_e300_VQ_BL.pt", "GPT-XXL on the B-L tokenizer's codes"),
    ("gigatok_gpt_xxl_xlxxl", "GPT_XXL256_e300_VQ_XLXXL.pt",
     "GPT-XXL on the XL-XXL tokenizer's codes")):
  _gigatok(_name, _file, "gpt", _desc)
del _name, _file, _desc
