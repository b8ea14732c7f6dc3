"""main.py's own pieces: exit statuses and the one-line Orbax error records."""

import logging
import re
import sys

from gigatok_jax import errors, main, preemption


def test_exit_statuses_are_distinct_and_documented():
  codes = {"user": errors.EXIT_USER_ERROR, "diverged": errors.EXIT_DIVERGED,
           "preempted": preemption.EXIT_PREEMPTED}
  assert codes == {"user": 2, "diverged": 3, "preempted": 75}
  for code in codes.values():
    assert re.search(rf"(^|\s){code} ", main.__doc__, re.M)


def test_orbax_error_records_keep_one_line():
  try:
    raise ValueError("RESOURCE_EXHAUSTED: No space left on device\nmore detail")
  except ValueError:
    exc_info = sys.exc_info()
  record = logging.LogRecord("absl", logging.ERROR,
                             "/venv/site-packages/orbax/checkpoint/_src/future.py", 387,
                             "thread raised: %s", (exc_info[1],), exc_info)
  assert main._OneLineOrbaxErrors().filter(record)
  assert record.exc_info is None and record.getMessage() == (
      "thread raised: RESOURCE_EXHAUSTED: No space left on device")
  ours = logging.LogRecord("absl", logging.ERROR, "/repo/gigatok_jax/x.py", 1, "a\nb", (),
                           exc_info)
  assert main._OneLineOrbaxErrors().filter(ours) and ours.exc_info is not None
