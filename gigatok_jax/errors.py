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
    self.message = message
    super().__init__(f"config key '{key}': {message}")


class DataError(UserError):
  """A dataset file or record is missing or unreadable."""


class CheckpointError(UserError):
  """A checkpoint directory or file cannot be used."""


class Diverged(Exception):
  """Training produced NaN or Inf (losses, weights or optimizer state); nothing of it was saved.
  Not a UserError: `main.py` exits with its own status (EXIT_DIVERGED)."""


EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
