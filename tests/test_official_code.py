"""Ports checked against the official GigaTok source itself, when GIGATOK_OFFICIAL names a checkout.

    GIGATOK_OFFICIAL=/path/to/GigaTok python -m pytest tests/test_official_code.py

The official repository (github.com/SilentView/GigaTok) is not vendored and CI has no copy, so
these tests skip there; the always-run tests of the same modules (tests/test_dino_discriminator.py)
use torch code written from the official semantics instead. Run these after changing a port.

What stands in for what the official modules import but these tests do not use:
  - `torchvision` (not installable beside this torch build): a module whose `transforms.RandomCrop`
    can be built but raises when called; the official backbone builds one for a crop that the
    heads never use.
  - the DINO download in `DinoDisc.__init__` (`torch.hub.load_state_dict_from_url`): an empty state
    dict, which its non-strict load accepts on CPU; the backbone then keeps its random init, and
    only the heads are compared (the backbone has its own test against transformers' ViT).
"""

import importlib
import importlib.util
import os
import sys
import types

import numpy as np
import pytest

OFFICIAL = os.environ.get("GIGATOK_OFFICIAL", "")
pytestmark = pytest.mark.skipif(
    not OFFICIAL, reason="set GIGATOK_OFFICIAL to a checkout of the official GigaTok repository")

torch = pytest.importorskip("torch")

import jax.numpy as jnp  # noqa: E402

from gigatok_jax.models import diffaug  # noqa: E402
from test_dino_discriminator import _rel, compare_heads  # noqa: E402


@pytest.fixture(scope="module")
def official(tmp_path_factory):
  """The official `tokenizer.tokenizer_image` modules, imported from the checkout."""
  if not os.path.isfile(os.path.join(OFFICIAL, "tokenizer", "tokenizer_image", "diffaug.py")):
    pytest.fail(f"GIGATOK_OFFICIAL={OFFICIAL} is not a checkout of the official GigaTok repository")
  saved = {k: sys.modules.get(k) for k in ("torchvision", "torchvision.transforms")}
  if importlib.util.find_spec("torchvision") is None:
    class RandomCrop:                                   # built by the backbone, never called here
      def __init__(self, *args, **kwargs):
        pass

      def __call__(self, *args, **kwargs):
        raise AssertionError("torchvision stand-in: RandomCrop is not available here")
    transforms = types.ModuleType("torchvision.transforms")
    transforms.RandomCrop = RandomCrop
    vision = types.ModuleType("torchvision")
    vision.transforms = transforms
    sys.modules.update({"torchvision": vision, "torchvision.transforms": transforms})
  sys.path.insert(0, OFFICIAL)
  try:
    yield types.SimpleNamespace(
        dino=importlib.import_module("tokenizer.tokenizer_image.discriminator_dino"),
        diffaug=importlib.import_module("tokenizer.tokenizer_image.diffaug"))
  finally:
    sys.path.remove(OFFICIAL)
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k, None)
      else:
        sys.modules[k] = v


def test_dino_discriminator_heads_match_the_official_dinodisc(official, monkeypatch):
  monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: {})
  torch.manual_seed(1)
  disc = official.dino.DinoDisc(device="cpu")          # the released file's settings (ks 9, bn)
  with torch.no_grad():                                 # BatchNormLocal affine off ones / zeros
    for name, p in disc.heads.named_parameters():
      if p.ndim == 1:
        p.add_(0.2 * torch.randn_like(p))
  assert len(disc.heads) == 5
  compare_heads(disc)


@pytest.mark.parametrize("shape", [(6, 32, 32), (3, 256, 200)])
def test_diffaug_matches_the_official_diffaug(official, monkeypatch, shape):
  """The official `DiffAug(prob=1, cutout=0.2).aug` with its torch.rand draws replaced by ours."""
  rng = np.random.default_rng(4)
  b, h, w = shape
  x = rng.uniform(-1, 1, (b, h, w, 3)).astype(np.float32)
  draws = rng.uniform(0, 1, (7, b)).astype(np.float32)
  draws[:, 0] = [0.0, 0.999, 0.5, 0.0, 0.999, 0.0, 0.999]     # extreme shifts and cut-outs
  given = iter([torch.zeros(3),                                 # translation, colour, cut-out: all on
                torch.from_numpy(draws).reshape(7, b, 1, 1)])
  monkeypatch.setattr(official.diffaug.torch, "rand", lambda *shape, **kw: next(given))
  ref = official.diffaug.DiffAug(prob=1.0, cutout=0.2).aug(
      torch.from_numpy(x).permute(0, 3, 1, 2).contiguous())
  assert next(given, None) is None                              # both draws were taken
  got = diffaug.augment(jnp.asarray(x), jnp.asarray(draws))
  assert _rel(got, ref.permute(0, 2, 3, 1).numpy()) < 1e-6
