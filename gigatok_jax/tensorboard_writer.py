"""TensorBoard event files without TensorFlow: scalars and images that TensorBoard reads as usual.

An event file is a sequence of records, each one serialized `Event` proto framed as
    uint64 length (little endian) | uint32 masked CRC-32C of those 8 bytes
    | payload | uint32 masked CRC-32C of the payload.
The protos come from the tensorboard package (`tensorboard.compat.proto`: generated protobuf code,
no TensorFlow). The framing and the checksum are done here because tensorboard's own
`EventFileWriter` opens its file through `tensorboard.compat.tf`, which is the real TensorFlow
wherever TensorFlow happens to be installed (seconds of import time and C++ banners).

Scalars are written as `simple_value`s and images as PNG `Summary.Image`s: the classic forms, which
TensorBoard's scalar and image dashboards (and its `EventAccumulator`) read directly.

Object stores (a `gs://` workdir) cannot append to an object. There the records are kept in memory
and the whole file is uploaded again (one object write, so a reader sees a valid prefix of the
records, just as with a local file that is still growing) at most every `upload_every_s` seconds
when something was written, at `flush()` and at `close()` (also run at interpreter exit). A crash
loses at most the last `upload_every_s` seconds of scalars. When a file reaches `part_bytes` a new
file is started (`<name>.p001`, ...; TensorBoard reads every tfevents file of the directory in name
order), so an upload never grows past that size.
"""

from __future__ import annotations

import atexit
import io
import itertools
import os
import socket
import struct
import time
import weakref

import numpy as np

from gigatok_jax import fileio

_CRC32C_POLY = 0x82F63B78   # Castagnoli polynomial, bit-reversed


def _crc32c_table() -> tuple[int, ...]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ _CRC32C_POLY if crc & 1 else crc >> 1
    table.append(crc)
  return tuple(table)


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C of `data` (pure Python; ~0.1 s per MB, and event payloads are small)."""
  crc, table = 0xFFFFFFFF, _TABLE
  for byte in data:
    crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  """The record format's checksum: the CRC rotated right by 15 bits plus a constant (mod 2^32)."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame_record(payload: bytes) -> bytes:
  """One record of an event file (see the module docstring)."""
  header = struct.pack("<Q", len(payload))
  return b"".join((header, struct.pack("<I", masked_crc32c(header)), payload,
                   struct.pack("<I", masked_crc32c(payload))))


def encode_png(image: np.ndarray) -> bytes:
  """A uint8 (H, W, 3) or (H, W) image as PNG bytes."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG")
  return buffer.getvalue()


_FILE_COUNTER = itertools.count()


class EventWriter:
  """Appends scalars and images to a new `events.out.tfevents.*` file in `logdir`.

  Local files: writes are synchronous and flushed per call (one small write per log interval), so a
  crashed run keeps everything it reported. Object stores: see the module docstring.
  """

  def __init__(self, logdir: str, *, upload_every_s: float = 30.0, part_bytes: int = 16 << 20):
    # Imported here: protobuf modules only, but not needed by code that never writes events.
    # pylint: disable-next=import-outside-toplevel
    from tensorboard.compat.proto import event_pb2, summary_pb2
    self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
    fileio.makedirs(logdir)
    now = time.time()
    # TensorBoard reads every file whose name contains "tfevents", in name order.
    name = (f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}.{os.getpid()}."
            f"{next(_FILE_COUNTER)}")
    self.path = fileio.join(logdir, name)
    self._remote = fileio.is_remote(logdir)
    if self._remote:
      self._file = None
      self._buffer = bytearray()
      self._part, self._part_path = 0, self.path
      self._dirty, self._uploaded_at = False, time.monotonic()
      self._upload_every_s, self._part_bytes = upload_every_s, part_bytes
      self._closed = False
      # A run that ends with an exception never calls close(): upload what it reported anyway.
      atexit.register(_close_at_exit, weakref.ref(self))
    else:
      self._file = open(self.path, "wb")   # pylint: disable=consider-using-with
    self._write(event_pb2.Event(wall_time=now, file_version="brain.Event:2"))

  def _write(self, event) -> None:
    record = frame_record(event.SerializeToString())
    if not self._remote:
      self._file.write(record)
      self._file.flush()
      return
    self._buffer += record
    self._dirty = True
    if time.monotonic() - self._uploaded_at >= self._upload_every_s:
      self.flush()

  def _upload(self) -> None:
    fileio.atomic_write_bytes(self._part_path, bytes(self._buffer))
    self._dirty, self._uploaded_at = False, time.monotonic()
    if len(self._buffer) >= self._part_bytes:
      # The next records go to a new file; it starts with the version record, like the first.
      self._part += 1
      self._part_path = f"{self.path}.p{self._part:03d}"
      self._buffer = bytearray(frame_record(self._event_pb2.Event(
          wall_time=time.time(), file_version="brain.Event:2").SerializeToString()))

  def _summary(self, step: int, values: list) -> None:
    self._write(self._event_pb2.Event(wall_time=time.time(), step=int(step),
                                      summary=self._summary_pb2.Summary(value=values)))

  def scalars(self, step: int, values: dict[str, float]) -> None:
    """One event holding every scalar of `values` (tag -> float) at `step`."""
    value = self._summary_pb2.Summary.Value
    self._summary(step, [value(tag=tag, simple_value=float(v)) for tag, v in values.items()])

  def image(self, step: int, tag: str, image: np.ndarray, png: bytes | None = None) -> None:
    """A uint8 (H, W, 3) image at `step` (`png`: its PNG bytes, when already encoded)."""
    image = np.asarray(image)
    height, width = image.shape[:2]
    channels = image.shape[2] if image.ndim == 3 else 1
    summary = self._summary_pb2.Summary
    encoded = summary.Image(height=height, width=width, colorspace=channels,
                            encoded_image_string=png if png is not None else encode_png(image))
    self._summary(step, [summary.Value(tag=tag, image=encoded)])

  def flush(self) -> None:
    if self._remote:
      if self._dirty and not self._closed:
        self._upload()
    elif not self._file.closed:
      self._file.flush()

  def close(self) -> None:
    if self._remote:
      self.flush()
      self._closed = True
    elif not self._file.closed:
      self._file.close()


def _close_at_exit(ref) -> None:
  writer = ref()
  if writer is not None:
    writer.close()
