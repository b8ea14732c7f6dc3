"""Every recipe against the official GigaTok training settings (gigatok_jax/config/official.py).

Each official value must be the recipe's value, unless the table lists the key as a difference kept
on purpose, with its reason; such a key must really differ (a stale entry fails too)."""

import os

import pytest

from gigatok_jax.config import official
from helpers import REPO, load_recipe


def _get(config, dotted):
  value = config
  for part in dotted.split("."):
    value = value[part]
  return tuple(value) if isinstance(value, (list, tuple)) else value


@pytest.mark.parametrize("name", sorted(official.RECIPES))
def test_recipe_equals_its_official_config(name):
  entry = official.RECIPES[name]
  config = load_recipe(name)
  mismatches = []
  for key, want in entry["values"].items():
    got = _get(config, key)
    if key in entry["on_purpose"]:
      assert got != want, f"{name}: {key} is listed as differing on purpose but equals {want!r}"
      assert len(entry["on_purpose"][key]) > 20       # a reason, not a placeholder
    elif got != want:
      mismatches.append(f"{key}: recipe {got!r}, official {want!r}")
  assert not mismatches, f"{name} vs {entry['source']}: " + "; ".join(mismatches)


def test_every_training_recipe_is_in_the_table():
  recipes = {f[:-3] for f in os.listdir(os.path.join(REPO, "configs"))
             if f.startswith(("tokenizer_", "gpt_")) and f.endswith(".py")}
  # Recipes with no official counterpart, each for a reason.
  no_official = {"gpt_l": "no official GPT-L script or checkpoint (README.md:74-89)",
                 "tokenizer_titok": "TiTok's settings, not GigaTok's (configs/tokenizer_titok.py)",
                 "tokenizer_ibq": "IBQ's quantizer; GigaTok has no IBQ config",
                 "tokenizer_fsq": "FSQ quantizer; GigaTok has no FSQ config",
                 "tokenizer_flextok": "FlexTok-style FSQ + nested dropout; no GigaTok config"}
  assert recipes - set(no_official) == set(official.RECIPES), recipes ^ set(official.RECIPES)
