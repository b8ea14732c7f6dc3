"""gigatok_jax.weights without internet: a threaded http.server on 127.0.0.1 serves fixture files.

Covers a good download and its cache hit, corrupted, stalled and interrupted https downloads
(pooch: retried from byte 0, never resumed, nothing left behind), the pin policy, offline errors,
local paths, hf:// sources (through huggingface_hub.hf_hub_download: a fake for the policy, and the
real one against a loopback stand-in of the Hub, resuming) and the CLI. An autouse fixture refuses
every non-loopback connection and turns pooch's retries off (the tests that need them turn them on).
"""

import dataclasses
import hashlib
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from gigatok_jax import fileio, weights
from gigatok_jax.weights import Artefact, SourceFile, WeightsError, download

from helpers import REPO, subprocess_env

DATA = bytes(range(256)) * 64 + b"gigatok"          # 16,391 bytes: several chunks of CHUNK=4096
SHA = hashlib.sha256(DATA).hexdigest()
CONVERTED = []                                     # (src_paths, out_path) of every conversion


def _reverse_converter(src_paths, out_path):
  """A trivial file converter: the bytes of all sources, reversed."""
  CONVERTED.append((list(src_paths), out_path))
  with open(out_path, "wb") as f:
    for p in src_paths:
      with open(p, "rb") as g:
        f.write(g.read()[::-1])


_reverse_converter_renamed = _reverse_converter     # the same conversion under a new name


def _dir_converter(src_paths, out_path):
  """A directory output, like a converted GigaTok run."""
  CONVERTED.append((list(src_paths), out_path))
  os.makedirs(os.path.join(out_path, "checkpoints"))
  with open(os.path.join(out_path, "checkpoints", "size.txt"), "w") as f:
    f.write(str(sum(os.path.getsize(p) for p in src_paths)))


def _failing_converter(src_paths, out_path):
  with open(out_path, "wb") as f:
    f.write(b"half")
  raise RuntimeError("converter bug")


class _State:
  def __init__(self):
    self.files: dict[str, bytes] = {}
    self.requests: list[tuple[str, str | None]] = []   # (path, Range header)
    self.cut_once: dict[str, int] = {}                   # path -> bytes sent before closing, once
    self.stall_s = 0.0


class _Handler(http.server.BaseHTTPRequestHandler):
  def do_HEAD(self):  # noqa: N802 - huggingface_hub asks for a file's metadata first
    st: _State = self.server.state
    st.requests.append((f"HEAD {self.path}", None))
    body = st.files.get(self.path)
    if body is None:
      self.send_error(404)
      return
    self.send_response(200)
    self.send_header("Content-Length", str(len(body)))
    self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
    self.send_header("X-Repo-Commit", "0123456789abcdef0123456789abcdef01234567")
    self.end_headers()

  def do_GET(self):  # noqa: N802 - http.server's naming
    st: _State = self.server.state
    rng = self.headers.get("Range")
    st.requests.append((self.path, rng))
    body = st.files.get(self.path)
    if body is None:
      self.send_error(404)
      return
    start = 0
    if rng:                   # huggingface_hub resumes with one
      start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
      if start >= len(body):
        self.send_error(416)
        return
      self.send_response(206)
      self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
    else:
      self.send_response(200)
    self.send_header("Content-Length", str(len(body) - start))
    self.send_header("Accept-Ranges", "bytes")
    self.end_headers()
    if st.stall_s:
      time.sleep(st.stall_s)
    payload = body[start:]
    cut = st.cut_once.pop(self.path, None)
    if cut is not None:       # fewer bytes than Content-Length, then the connection closes
      payload = payload[:cut]
      self.close_connection = True
    try:
      self.wfile.write(payload)
      self.wfile.flush()
    except OSError:
      pass

  def log_message(self, *args):
    pass


@pytest.fixture(autouse=True)
def no_real_network(monkeypatch):
  """Loopback only; no proxies; no offline variables or cache dir from the caller's shell."""
  real = socket.create_connection

  def guarded(address, *args, **kwargs):
    if address[0] not in ("127.0.0.1", "localhost"):
      raise AssertionError(f"test tried to reach the network: {address}")
    return real(address, *args, **kwargs)
  monkeypatch.setattr(socket, "create_connection", guarded)
  for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
              "GIGATOK_OFFLINE", "HF_HUB_OFFLINE", "GIGATOK_CACHE_DIR"):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
  monkeypatch.setattr(fileio, "CHUNK", 4096)
  monkeypatch.setattr(download, "DOWNLOAD_RETRIES", 0)     # each retry waits >= 1 s
  CONVERTED.clear()


@pytest.fixture
def server():
  srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
  srv.daemon_threads = True
  srv.state = _State()
  srv.state.base = f"http://127.0.0.1:{srv.server_address[1]}"
  thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.01},
                            daemon=True)          # a short poll: shutdown() waits for one
  thread.start()
  yield srv.state
  srv.shutdown()
  srv.server_close()


def _artefact(server, name="fixture", *, data=DATA, sha256=SHA, prefix=None, serve=None,
              converter="_reverse_converter", output="fixture.bin"):
  """An artefact with one file, served at /<name>.bin (with `serve` bytes, default `data`)."""
  server.files[f"/{name}.bin"] = data if serve is None else serve
  return Artefact(name=name, files=(SourceFile(f"{name}.bin", (f"{server.base}/{name}.bin",),
                                               sha256=sha256, sha256_prefix=prefix),),
                  converter=f"{__name__}:{converter}", output=output,
                  description="test fixture", how_to_get="from the test server")


def _leftovers(cache):
  """Every file under the cache except lock files."""
  out = []
  for root, _, files in os.walk(cache):
    out += [os.path.relpath(os.path.join(root, f), cache) for f in files
            if ".locks" not in root]
  return sorted(out)


def test_good_download_converts_and_second_resolve_is_a_cache_hit(server, tmp_path):
  art = _artefact(server)
  path = weights.resolve(art, cache_dir=str(tmp_path), progress=True)
  assert path == str(tmp_path / "fixture" / "fixture.bin")
  assert open(path, "rb").read() == DATA[::-1]
  record = json.load(open(path + ".json"))
  assert record["artefact"] == "fixture" and record["converter"] == art.converter
  assert record["sources"] == [{"filename": "fixture.bin", "sha256": SHA,
                                "origin": f"{server.base}/fixture.bin", "verified": "sha256"}]
  assert record["gigatok_jax_version"] and record["created"]
  assert _leftovers(tmp_path) == ["downloads/fixture.bin", "fixture/fixture.bin",
                                  "fixture/fixture.bin.json"]
  assert len(server.requests) == 1 and len(CONVERTED) == 1

  assert weights.resolve(art, cache_dir=str(tmp_path)) == path
  assert len(server.requests) == 1 and len(CONVERTED) == 1     # no second request, no reconversion


def test_record_under_a_former_converter_name_is_still_a_hit(server, tmp_path):
  """A renamed converter keeps old cache records valid through `former_converters`; any other
  converter name in a record is a miss (the conversion runs again)."""
  old = _artefact(server)
  path = weights.resolve(old, cache_dir=str(tmp_path), progress=False)
  assert len(CONVERTED) == 1
  renamed = dataclasses.replace(old, converter=f"{__name__}:_reverse_converter_renamed",
                                former_converters=(old.converter,))
  assert weights.resolve(renamed, cache_dir=str(tmp_path)) == path
  assert len(server.requests) == 1 and len(CONVERTED) == 1     # a hit: nothing converted again
  other = dataclasses.replace(old, converter=f"{__name__}:_reverse_converter_renamed")
  assert weights.resolve(other, cache_dir=str(tmp_path)) == path
  assert len(CONVERTED) == 2                                    # a miss: converted again


def test_corrupted_download_is_refused_and_nothing_is_cached(server, tmp_path):
  bad = DATA[:-1] + b"X"
  art = _artefact(server, serve=bad)
  with pytest.raises(WeightsError) as e:
    weights.resolve(art, cache_dir=str(tmp_path), progress=False)
  msg = str(e.value)
  assert "sha256 mismatch" in msg and SHA in msg and hashlib.sha256(bad).hexdigest() in msg
  assert _leftovers(tmp_path) == [] and CONVERTED == []       # no final name, no .part, no entry


def test_sha256_prefix_pin_of_torch_hub_style_names(server, tmp_path):
  ok = _artefact(server, "prefixed", sha256=None, prefix=SHA[:8])
  assert json.load(open(weights.resolve(ok, cache_dir=str(tmp_path), progress=False) + ".json")
                   )["sources"][0]["verified"] == "sha256_prefix"
  wrong = _artefact(server, "wrongprefix", sha256=None, prefix="00000000")
  with pytest.raises(WeightsError, match=r"starting with 00000000 .*actual sha256 " + SHA):
    weights.resolve(wrong, cache_dir=str(tmp_path), progress=False)
  assert not os.path.exists(tmp_path / "downloads" / "wrongprefix.bin.part")


def test_interrupted_https_download_errors_leaves_nothing_and_a_rerun_starts_over(server,
                                                                                  tmp_path):
  """pooch does not resume: a short body is one error line, no file is kept (no final name, no
  .part, no temporary file), and the next run downloads the whole file again."""
  art = _artefact(server)
  server.cut_once["/fixture.bin"] = 5000
  with pytest.raises(WeightsError) as e:
    weights.resolve(art, cache_dir=str(tmp_path), progress=False)
  msg = str(e.value)
  assert re.search(r"could not download fixture.bin: \S+/fixture.bin: ChunkedEncodingError: .*"
                   r"IncompleteRead\(5000 bytes read, 11391 more expected\)", msg), msg
  assert "\n" not in msg and _leftovers(tmp_path) == [] and CONVERTED == []
  assert os.listdir(tmp_path / "downloads") == []

  path = weights.resolve(art, cache_dir=str(tmp_path), progress=True)
  assert open(path, "rb").read() == DATA[::-1]
  assert server.requests == [("/fixture.bin", None), ("/fixture.bin", None)]   # no Range: byte 0
  assert open(tmp_path / "downloads" / "fixture.bin", "rb").read() == DATA


def test_https_failure_is_retried_from_byte_0_within_the_call(server, tmp_path, monkeypatch):
  monkeypatch.setattr(download, "DOWNLOAD_RETRIES", 1)
  art = _artefact(server)
  server.cut_once["/fixture.bin"] = 5000
  path = weights.resolve(art, cache_dir=str(tmp_path), progress=False)
  assert open(path, "rb").read() == DATA[::-1]
  assert server.requests == [("/fixture.bin", None), ("/fixture.bin", None)]
  assert _leftovers(tmp_path) == ["downloads/fixture.bin", "fixture/fixture.bin",
                                  "fixture/fixture.bin.json"]


def test_leftovers_of_a_killed_download_are_never_taken_for_the_file(server, tmp_path):
  """A process killed mid-download may leave pooch's staging folder (its temporary file, or the
  file pooch had just moved there) or a `.part` (an older version kept one to resume from):
  none of it is used, a failed download removes it, and the next one downloads the whole file."""
  downloads = tmp_path / "downloads"
  staging = downloads / "fixture.bin.part.pooch"

  def leave_leftovers():
    staging.mkdir(parents=True)
    (staging / "tmpkilled").write_bytes(DATA[:100])
    (staging / "fixture.bin").write_bytes(DATA[:100])     # pooch would take it as downloaded
    (downloads / "fixture.bin.part").write_bytes(DATA[:5000])

  art = _artefact(server)
  leave_leftovers()
  server.cut_once["/fixture.bin"] = 5000
  with pytest.raises(WeightsError, match="IncompleteRead"):
    weights.resolve(art, cache_dir=str(tmp_path), progress=False)
  assert _leftovers(tmp_path) == [] and os.listdir(downloads) == []

  leave_leftovers()
  assert open(weights.resolve(art, cache_dir=str(tmp_path), progress=False), "rb").read() == \
      DATA[::-1]
  assert server.requests == [("/fixture.bin", None), ("/fixture.bin", None)]
  assert sorted(os.listdir(downloads)) == ["fixture.bin"]


def test_stalled_server_times_out_with_a_clear_error(server, tmp_path, monkeypatch):
  monkeypatch.setattr(download, "DOWNLOAD_TIMEOUT_S", 0.1)
  server.stall_s = 0.5
  with pytest.raises(WeightsError, match=r"could not download fixture.bin: .*ConnectionError: "
                                         r".*Read timed out\.[^\n]*$"):
    weights.resolve(_artefact(server), cache_dir=str(tmp_path), progress=False)
  assert not os.path.exists(tmp_path / "fixture")
  assert _leftovers(tmp_path) == []


def test_unreachable_source_falls_back_to_the_next_one(server, tmp_path):
  art = _artefact(server)
  art = Artefact(name=art.name, converter=art.converter, output=art.output, files=(SourceFile(
      "fixture.bin", (f"{server.base}/missing.bin", f"{server.base}/fixture.bin"), sha256=SHA),))
  assert open(weights.resolve(art, cache_dir=str(tmp_path), progress=False), "rb").read() == \
      DATA[::-1]
  assert [p for p, _ in server.requests] == ["/missing.bin", "/fixture.bin"]
  # Both failing: one line naming each source and its error.
  with socket.socket() as sock:              # a loopback port nothing listens on
    sock.bind(("127.0.0.1", 0))
    refused = f"http://127.0.0.1:{sock.getsockname()[1]}/refused.bin"
  art = Artefact(name="nowhere", converter=art.converter, output=art.output, files=(SourceFile(
      "nowhere.bin", (f"{server.base}/missing.bin", refused), sha256=SHA),))
  with pytest.raises(WeightsError) as e:
    weights.resolve(art, cache_dir=str(tmp_path), progress=False)
  msg = str(e.value)
  assert re.search(rf"could not download nowhere.bin: {server.base}/missing.bin: HTTPError: 404 "
                   rf".* \| {refused}: ConnectionError: ", msg), msg
  assert "\n" not in msg and not os.path.exists(tmp_path / "downloads" / "nowhere.bin")


@pytest.mark.parametrize("var", ["GIGATOK_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_and_missing_names_file_source_and_path(server, tmp_path, monkeypatch, var):
  monkeypatch.setenv(var, "1")
  art = _artefact(server)
  with pytest.raises(WeightsError) as e:
    weights.resolve(art, cache_dir=str(tmp_path))
  msg = str(e.value)
  assert f"{var}=1" in msg and "fixture.bin" in msg and f"{server.base}/fixture.bin" in msg
  assert f"put it at {tmp_path / 'downloads' / 'fixture.bin'}" in msg
  assert server.requests == []
  # The file put where the message says is then used, offline.
  os.makedirs(tmp_path / "downloads")
  (tmp_path / "downloads" / "fixture.bin").write_bytes(DATA)
  assert open(weights.resolve(art, cache_dir=str(tmp_path)), "rb").read() == DATA[::-1]


def test_builtin_artefact_offline_error(tmp_path, monkeypatch):
  monkeypatch.setenv("GIGATOK_OFFLINE", "1")
  with pytest.raises(WeightsError) as e:
    weights.resolve("fid_inception", cache_dir=str(tmp_path))
  msg = str(e.value)
  assert "pt_inception-2015-12-05-6726825d.pth" in msg
  assert "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" in msg
  assert str(tmp_path / "downloads" / "pt_inception-2015-12-05-6726825d.pth") in msg


def test_unpinned_file_needs_expected_sha256_or_allow_unpinned(server, tmp_path, capsys):
  art = _artefact(server, sha256=None)
  with pytest.raises(WeightsError, match=r"no pinned sha256.*--sha256.*--allow_unpinned"):
    weights.resolve(art, cache_dir=str(tmp_path), online=True)
  assert server.requests == []

  with pytest.raises(WeightsError,
                     match=rf"expected \(--sha256\) sha256 {'0' * 64}, actual sha256 {SHA}"):
    weights.resolve(art, cache_dir=str(tmp_path), expected_sha256="0" * 64, progress=False)
  assert _leftovers(tmp_path) == []
  path = weights.resolve(art, cache_dir=str(tmp_path), expected_sha256=SHA.upper(), progress=False)
  assert json.load(open(path + ".json"))["sources"][0]["verified"] == "expected_sha256"

  other = _artefact(server, "other", sha256=None)
  path = weights.resolve(other, cache_dir=str(tmp_path), allow_unpinned=True, progress=False)
  assert SHA in capsys.readouterr().err
  source = json.load(open(path + ".json"))["sources"][0]
  assert source["sha256"] == SHA and source["verified"] == "unpinned"


def test_local_path_is_verified_and_converted_into_the_cache(server, tmp_path):
  art = _artefact(server, output="run", converter="_dir_converter")
  local = tmp_path / "mine.bin"
  local.write_bytes(DATA[:-1] + b"Y")
  cache = tmp_path / "cache"
  with pytest.raises(WeightsError, match=f"pinned sha256 {SHA}"):
    weights.resolve(art, path=str(local), cache_dir=str(cache), online=False)
  assert CONVERTED == [] and not os.path.exists(cache / "fixture")

  local.write_bytes(DATA)
  out = weights.resolve(art, path=str(local), cache_dir=str(cache), online=False)
  assert out == str(cache / "fixture" / "run") and os.path.isdir(out)
  assert open(os.path.join(out, "checkpoints", "size.txt")).read() == str(len(DATA))
  assert json.load(open(out + ".json"))["sources"][0]["origin"] == str(local)
  assert CONVERTED[0][0] == [str(local)]
  assert not os.path.exists(cache / "downloads")              # the local file is not copied
  (tmp_path / "dir").mkdir()
  (tmp_path / "dir" / "fixture.bin").write_bytes(DATA)
  assert weights.resolve(art, path=str(tmp_path / "dir"), cache_dir=str(cache), online=False) == out
  assert len(CONVERTED) == 1 and server.requests == []        # directory path: same file, a hit
  with pytest.raises(WeightsError, match="nothere.bin is not a file"):
    weights.resolve(art, path=str(tmp_path / "nothere.bin"), cache_dir=str(cache))

  # An unpinned file the user names is accepted, its sha256 recorded.
  free = _artefact(server, "free", sha256=None)
  out = weights.resolve(free, path=str(local), cache_dir=str(cache), online=False)
  assert json.load(open(out + ".json"))["sources"][0] == {
      "filename": "free.bin", "sha256": SHA, "origin": str(local), "verified": "unpinned"}


def test_no_record_no_hit_and_failed_conversion_leaves_nothing(server, tmp_path):
  art = _artefact(server, output="run", converter="_dir_converter")
  out = weights.resolve(art, cache_dir=str(tmp_path), progress=False)
  os.remove(out + ".json")                                    # as after a crash mid-conversion
  assert weights.resolve(art, cache_dir=str(tmp_path), progress=False) == out
  assert len(CONVERTED) == 2 and len(server.requests) == 1    # reconverted from downloads/
  assert os.path.isfile(out + ".json")

  broken = _artefact(server, "broken", converter="_failing_converter")
  with pytest.raises(RuntimeError, match="converter bug"):
    weights.resolve(broken, cache_dir=str(tmp_path), progress=False)
  assert os.listdir(tmp_path / "broken") == []
  assert os.path.isfile(tmp_path / "downloads" / "broken.bin")  # the verified download is kept


def test_sha256_is_computed_in_chunks(tmp_path, monkeypatch):
  path = tmp_path / "big.bin"
  path.write_bytes(DATA)
  reads = []
  real_open = open

  class Spy:
    def __init__(self, f):
      self.f = f

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      self.f.close()

    def read(self, n=-1):
      reads.append(n)
      return self.f.read(n)

  monkeypatch.setattr(fileio, "open", lambda p, mode="r": Spy(real_open(p, mode)), raising=False)
  assert weights.sha256_file(str(path)) == SHA
  assert reads and all(n == weights.CHUNK for n in reads) and len(reads) == len(DATA) // 4096 + 2


def _hf_artefact(filename, source=None, name=None):
  return Artefact(name=name or filename.split(".")[0], files=(SourceFile(
      filename, (source or f"hf://owner/repo/{filename}",), sha256=SHA),),
      converter=f"{__name__}:_reverse_converter", output="out")


def test_hf_source_goes_through_hf_hub_download_and_is_verified(tmp_path, monkeypatch):
  calls = []

  def fake_hf_hub_download(repo_id, filename, *, revision, local_dir, **_):
    calls.append((repo_id, filename, revision, local_dir))
    os.makedirs(os.path.join(local_dir, os.path.dirname(filename)), exist_ok=True)
    with open(os.path.join(local_dir, filename), "wb") as f:
      f.write(DATA if filename.endswith("good.bin") else b"not it")
    return os.path.join(local_dir, filename)
  monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_hf_hub_download)

  good = _hf_artefact("good.bin", "hf://owner/repo@v1/dir/good.bin")
  assert open(weights.resolve(good, cache_dir=str(tmp_path)), "rb").read() == DATA[::-1]
  with pytest.raises(WeightsError, match=f"pinned sha256 {SHA}, actual sha256 "
                                         f"{hashlib.sha256(b'not it').hexdigest()}"):
    weights.resolve(_hf_artefact("bad.bin"), cache_dir=str(tmp_path))
  part = str(tmp_path / "downloads" / "{}.part.hf")
  assert calls == [("owner/repo", "dir/good.bin", "v1", part.format("good.bin")),
                   ("owner/repo", "bad.bin", "main", part.format("bad.bin"))]
  assert sorted(os.listdir(tmp_path / "downloads")) == ["good.bin"]   # no staging folder left


def test_hf_failure_is_one_line_and_nothing_of_it_stays(tmp_path, monkeypatch):
  """huggingface_hub's own metadata in the staging folder goes after a failure; what a killed
  process left there (a stale copy, a partial file) is removed before the next call."""
  calls = []

  def fake_hf_hub_download(repo_id, filename, *, revision, local_dir, **_):
    calls.append(os.path.exists(local_dir))
    meta = os.path.join(local_dir, ".cache", "huggingface", "download")
    os.makedirs(meta)
    open(os.path.join(meta, "w.bin.metadata"), "w").close()
    if len(calls) == 1:
      raise RuntimeError("Connection broken\nMax retries exceeded.")
    with open(os.path.join(local_dir, filename), "wb") as f:
      f.write(DATA)
    return os.path.join(local_dir, filename)
  monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_hf_hub_download)

  art = _hf_artefact("w.bin")
  with pytest.raises(WeightsError) as e:
    weights.resolve(art, cache_dir=str(tmp_path), progress=False)
  msg = str(e.value)
  assert msg.startswith("w: could not download w.bin: hf://owner/repo/w.bin: huggingface_hub: "
                        "RuntimeError: Connection broken; or download it yourself and put it at ")
  assert "\n" not in msg and os.listdir(tmp_path / "downloads") == []

  staging = tmp_path / "downloads" / "w.bin.part.hf"      # as a killed process leaves it
  (staging / ".cache").mkdir(parents=True)
  (staging / "w.bin").write_bytes(DATA[:100])
  (staging / ".cache" / "x.incomplete").write_bytes(DATA[:5000])
  assert open(weights.resolve(art, cache_dir=str(tmp_path), progress=False), "rb").read() == \
      DATA[::-1]
  assert calls == [False, False]
  assert sorted(os.listdir(tmp_path / "downloads")) == ["w.bin"]


def test_hf_hub_offline_is_the_offline_error_without_calling_the_hub(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr("huggingface_hub.hf_hub_download", lambda *a, **k: calls.append(a))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  with pytest.raises(WeightsError) as e:
    weights.resolve(_hf_artefact("w.bin"), cache_dir=str(tmp_path))
  assert str(e.value) == (
      "w: w.bin is not in the cache and downloads are off (HF_HUB_OFFLINE=1); get it from "
      f"hf://owner/repo/w.bin, put it at {tmp_path / 'downloads' / 'w.bin'} (or pass path= / "
      "--path=FILE)")
  assert calls == []


def test_real_hf_hub_download_resumes_from_a_loopback_hub(server, tmp_path, monkeypatch):
  """The real huggingface_hub against a stand-in of the Hub on 127.0.0.1: the arguments we pass
  are the ones it takes, and a body cut short is resumed with a Range request in the same call
  (from the last whole chunk it wrote)."""
  import huggingface_hub.constants as hf_constants
  monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
  monkeypatch.setattr(hf_constants, "ENDPOINT", server.base)
  monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                      server.base + "/{repo_id}/resolve/{revision}/{filename}")
  monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", 4096)   # it resumes at chunk bounds
  server.files["/owner/repo/resolve/v1/dir/w.bin"] = DATA
  server.cut_once["/owner/repo/resolve/v1/dir/w.bin"] = 5000
  art = _hf_artefact("w.bin", "hf://owner/repo@v1/dir/w.bin")
  assert open(weights.resolve(art, cache_dir=str(tmp_path), progress=False), "rb").read() == \
      DATA[::-1]
  gets = [r for r in server.requests if r[0].startswith("/owner/")]   # not HEADs, nor telemetry
  assert gets == [("/owner/repo/resolve/v1/dir/w.bin", None),
                  ("/owner/repo/resolve/v1/dir/w.bin", "bytes=4096-")]
  assert sorted(os.listdir(tmp_path / "downloads")) == ["w.bin"]

  # A file the stand-in does not have: the hub's error, as one line.
  with pytest.raises(WeightsError) as e:
    weights.resolve(_hf_artefact("gone.bin"), cache_dir=str(tmp_path), progress=False)
  msg = str(e.value)
  assert "could not download gone.bin: hf://owner/repo/gone.bin: huggingface_hub: " in msg, msg
  assert "\n" not in msg and sorted(os.listdir(tmp_path / "downloads")) == ["w.bin"]


def test_cli_fetch_list_and_one_line_errors(server, tmp_path, capsys):
  art = weights.register(_artefact(server, "cli_fixture"))
  try:
    assert weights.main(["fetch", "cli_fixture", f"--cache_dir={tmp_path}", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli_fixture" / art.output)
    assert weights.main(["list", f"--cache_dir={tmp_path}"]) == 0
    listing = capsys.readouterr().out
    assert re.search(r"cli_fixture\s+cached\s+sha256", listing)
    assert re.search(r"lpips_vgg16\s+-\s+sha256 397923af", listing)
    assert weights.main(["fetch", "gigatok_ss", f"--cache_dir={tmp_path}", "--offline"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: gigatok_ss: VQ_SS256_e100.pt") and err.count("\n") == 1
  finally:
    weights.unregister("cli_fixture")


def test_module_cli_exits_2_without_traceback_and_import_is_cheap(tmp_path):
  """`python -m gigatok_jax.weights`: one `error:` line, exit 2; importing it loads no JAX."""
  env = subprocess_env(GIGATOK_OFFLINE="1")
  proc = subprocess.run([sys.executable, "-m", "gigatok_jax.weights", "fetch", "dinov2_vitb14",
                         f"--cache_dir={tmp_path}"], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=60)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert proc.stderr.startswith("error: dinov2_vitb14: dinov2_vitb14_pretrain.pth is not in the "
                                "cache") and proc.stderr.count("\n") == 1
  assert "GIGATOK_OFFLINE=1" in proc.stderr
  proc = subprocess.run([sys.executable, "-c", "import sys, gigatok_jax.weights; "
                         "print(sorted(m for m in ('jax', 'torch', 'tqdm', 'huggingface_hub', "
                         "'pooch', 'requests') "
                         "if m in sys.modules))"], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=60)
  assert proc.stdout.strip() == "[]", proc.stderr


def test_builtin_artefacts_and_their_pins():
  arts = {a.name: a for a in weights.list_artefacts()}
  assert {"dinov2_vitb14", "lpips_vgg16", "fid_inception", "gigatok_ss", "gigatok_sb",
          "gigatok_bl", "gigatok_bl_dino_disc", "gigatok_xlxxl", "gigatok_gpt_b_ss",
          "gigatok_gpt_xxl_xlxxl"} <= set(arts)
  assert arts["lpips_vgg16"].files[0].sha256_prefix == "397923af"
  assert arts["fid_inception"].files[0].sha256_prefix == "6726825d"
  assert arts["dinov2_vitb14"].files[0].sha256 is None
  assert not arts["dinov2_vitb14"].files[0].pinned
  assert arts["dino_vits16"].files[0].sha256 is None
  for name in ("dinov2_vitb14", "lpips_vgg16", "fid_inception", "dino_vits16"):
    assert callable(getattr(weights, arts[name].converter.split(":")[1]))
  for name, art in arts.items():
    if name.startswith("gigatok_"):
      kind = "gpt" if "_gpt_" in name else "tokenizer"
      assert art.converter == "gigatok_jax.convert.release:convert_release_file"
      assert art.former_converters == (f"gigatok_jax.convert.gigatok:convert_{kind}_file",)
      assert art.files[0].sources[0].startswith("hf://YuuTennYi/GigaTok/")
      assert not art.files[0].pinned and "Google Drive" in art.how_to_get
  with pytest.raises(WeightsError, match="unknown pretrained artefact 'nope'"):
    weights.resolve("nope")
  with pytest.raises(ValueError):
    SourceFile("x.pth", sha256="abc")
