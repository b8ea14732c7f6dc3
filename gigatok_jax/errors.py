"""User-facing errors.

`main.py` prints these as one clear line and exits non-zero (no traceback): they mean the user's
config, data or files are wrong, not that gigatok_jax has a bug.
"""


class UserError(Exception):
  """Base class: a problem with the user's input, reported without a traceback."""


class ConfigError(UserError):
  """A config value is wrong. `key` is the dotted config key, e.g. 'data.train_path'."""

  def __init__(self, key: str, message: str):
    self.key = key
    super().__init__(f"config key '{key}': {message}")


class DataError(UserError):
  """A dataset file or record is missing or unreadable."""


class CheckpointError(UserError):
  """A checkpoint directory or file cannot be used."""
