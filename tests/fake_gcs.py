"""A fake Google Cloud Storage server for tests: the JSON API on 127.0.0.1, objects in memory.

Why a server and not mocks: a gs:// run is written by three independent clients, and each must
really talk to a bucket for the test to mean anything:
  - gcsfs (etils `epath` on a machine without TensorFlow; our `fileio`), pointed here by
    STORAGE_EMULATOR_HOST;
  - TensorStore's gcs driver (Orbax checkpoints), pointed here by TENSORSTORE_GCS_HTTP_URL, with
    GOOGLE_AUTH_TOKEN_FOR_TESTING instead of real credentials;
  - google-cloud-cpp inside array_record (riegeli's GcsReader: grain reading gs:// shards), pointed
    here by CLOUD_STORAGE_EMULATOR_ENDPOINT.
`FakeGcs.env()` gives all of them (plus the switches that keep epath and gcsfs on plain HTTP).

Only the calls those clients make are served: object metadata, media downloads (with Range, also
suffix and open ranges), uploads (media, multipart and resumable), listing with prefix / delimiter
/ startOffset / endOffset / pages, delete, rewrite / copy / move / compose, bucket metadata, and
the generation preconditions (ifGenerationMatch, ifGenerationNotMatch) TensorStore relies on.
Anything else answers 501 and is recorded in `unsupported`, so a test can show what was missed.
"""

from __future__ import annotations

import dataclasses
import datetime
import http.server
import json
import re
import threading
import time
import urllib.parse
import uuid


@dataclasses.dataclass
class _Object:
  data: bytes
  generation: int
  updated: float
  content_type: str = "application/octet-stream"
  metadata: dict | None = None


def _rfc3339(t: float) -> str:
  return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
      "%Y-%m-%dT%H:%M:%S.%fZ")


class _Failure(Exception):
  def __init__(self, code: int, message: str = ""):
    super().__init__(message)
    self.code, self.message = code, message


class FakeGcs:
  """The bucket store and its server thread; `with FakeGcs() as gcs:` starts and stops it."""

  def __init__(self, buckets=("fake-bucket",)):
    self.buckets = set(buckets)
    self.objects: dict[tuple[str, str], _Object] = {}
    self.uploads: dict[str, dict] = {}
    self.unsupported: list[str] = []
    self.requests = 0
    self.lock = threading.Lock()
    self._generation = int(time.time() * 1e6)
    self._server = None
    self._thread = None

  # ------------------------------------------------------------------------------ lifecycle
  def start(self) -> "FakeGcs":
    self._server = _Server(("127.0.0.1", 0), _handler(self))
    self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
    self._thread.start()
    return self

  def stop(self) -> None:
    if self._server is not None:
      self._server.shutdown()
      self._server.server_close()
      self._server = None

  def __enter__(self) -> "FakeGcs":
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()

  @property
  def url(self) -> str:
    return f"http://127.0.0.1:{self._server.server_address[1]}"

  def env(self) -> dict[str, str]:
    """Environment variables that send every client here, with no credentials needed."""
    return {
        "STORAGE_EMULATOR_HOST": self.url,              # gcsfs
        "TENSORSTORE_GCS_HTTP_URL": self.url,           # TensorStore (Orbax)
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake-token",  # TensorStore: skip the credential search
        "CLOUD_STORAGE_EMULATOR_ENDPOINT": self.url,    # google-cloud-cpp (array_record reader)
        "EPATH_USE_TF": "false",                        # epath: gcsfs even where TF is installed
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",   # gcsfs: no gRPC bucket-type lookups
    }

  # ------------------------------------------------------------------------------ inspection
  def names(self, bucket: str = "fake-bucket", prefix: str = "") -> list[str]:
    with self.lock:
      return sorted(n for b, n in self.objects if b == bucket and n.startswith(prefix))

  def read(self, bucket: str, name: str) -> bytes:
    with self.lock:
      return self.objects[(bucket, name)].data

  def put(self, bucket: str, name: str, data: bytes) -> None:
    with self.lock:
      self._store(bucket, name, data)

  def delete(self, bucket: str, name: str) -> None:
    with self.lock:
      del self.objects[(bucket, name)]

  # ------------------------------------------------------------------------------ store (locked)
  def _store(self, bucket: str, name: str, data: bytes, content_type: str = "",
             metadata: dict | None = None) -> _Object:
    if bucket not in self.buckets:
      raise _Failure(404, f"bucket {bucket} not found")
    self._generation += 1
    obj = _Object(bytes(data), self._generation, time.time(),
                  content_type or "application/octet-stream", metadata)
    self.objects[(bucket, name)] = obj
    return obj

  def _resource(self, bucket: str, name: str, obj: _Object) -> dict:
    return {"kind": "storage#object", "id": f"{bucket}/{name}/{obj.generation}",
            "bucket": bucket, "name": name, "size": str(len(obj.data)),
            "generation": str(obj.generation), "metageneration": "1",
            "contentType": obj.content_type, "storageClass": "STANDARD",
            "timeCreated": _rfc3339(obj.updated), "updated": _rfc3339(obj.updated),
            **({"metadata": obj.metadata} if obj.metadata else {})}

  def _check_preconditions(self, bucket: str, name: str, query: dict, *, reading: bool) -> None:
    obj = self.objects.get((bucket, name))
    generation = obj.generation if obj else 0
    if "ifGenerationMatch" in query and int(query["ifGenerationMatch"]) != generation:
      raise _Failure(412, "ifGenerationMatch failed")
    if "ifGenerationNotMatch" in query and int(query["ifGenerationNotMatch"]) == generation:
      raise _Failure(304 if reading else 412, "ifGenerationNotMatch failed")
    if "ifMetagenerationMatch" in query and obj is None:
      raise _Failure(412, "ifMetagenerationMatch failed")

  def _get(self, bucket: str, name: str) -> _Object:
    obj = self.objects.get((bucket, name))
    if obj is None:
      raise _Failure(404, f"No such object: {bucket}/{name}")
    return obj

  def _list(self, bucket: str, query: dict) -> dict:
    if bucket not in self.buckets:
      raise _Failure(404, f"bucket {bucket} not found")
    prefix, delimiter = query.get("prefix", ""), query.get("delimiter", "")
    start, end = query.get("startOffset", ""), query.get("endOffset", "")
    names = sorted(n for b, n in self.objects if b == bucket and n.startswith(prefix)
                   and n >= start and (not end or n < end))
    items, prefixes = [], []
    for n in names:
      rest = n[len(prefix):]
      if delimiter and delimiter in rest:
        p = prefix + rest.split(delimiter, 1)[0] + delimiter
        if p not in prefixes:
          prefixes.append(p)
        if query.get("includeTrailingDelimiter") == "true" and rest.endswith(delimiter) \
            and rest.count(delimiter) == 1:
          items.append(n)
      else:
        items.append(n)
    # One page holds at most maxResults entries; the token is the index of the next one.
    entries = [("item", n) for n in items] + [("prefix", p) for p in prefixes]
    entries.sort(key=lambda e: e[1])
    first = int(query.get("pageToken") or 0)
    size = int(query.get("maxResults") or 1000)
    page = entries[first:first + size]
    out = {"kind": "storage#objects",
           "items": [self._resource(bucket, n, self.objects[(bucket, n)])
                     for kind, n in page if kind == "item"],
           "prefixes": [n for kind, n in page if kind == "prefix"]}
    if first + size < len(entries):
      out["nextPageToken"] = str(first + size)
    return out


# ------------------------------------------------------------------------------------ HTTP layer
class _Server(http.server.ThreadingHTTPServer):
  daemon_threads = True

  def handle_error(self, request, client_address):
    import sys  # pylint: disable=import-outside-toplevel
    if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
      super().handle_error(request, client_address)   # clients hanging up are not news


_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")
_CONTENT_RANGE = re.compile(r"bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)$")


def _split_multipart(body: bytes, content_type: str) -> tuple[dict, bytes]:
  """multipart/related upload: (JSON metadata of part 1, raw bytes of part 2)."""
  boundary = re.search(r'boundary="?([^";]+)"?', content_type).group(1).encode()
  delimiter = b"--" + boundary
  first = body.index(delimiter) + len(delimiter)
  second = body.index(delimiter, first)
  meta_part = body[first:second]
  meta = json.loads(re.split(rb"\r?\n\r?\n", meta_part, maxsplit=1)[1].strip() or b"{}")
  rest = body[second + len(delimiter):]
  data = re.split(rb"\r?\n\r?\n", rest, maxsplit=1)[1]
  close = data.rindex(delimiter + b"--")
  data = data[:close]
  for ending in (b"\r\n", b"\n"):       # the line break before the closing delimiter
    if data.endswith(ending):
      data = data[:-len(ending)]
      break
  return meta, data


def _handler(gcs: FakeGcs):

  class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
      pass

    # --- plumbing ------------------------------------------------------------------------------
    def _body(self) -> bytes:
      if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
          size = int(self.rfile.readline().split(b";")[0].strip(), 16)
          if size == 0:
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
              pass
            return b"".join(chunks)
          chunks.append(self.rfile.read(size))
          self.rfile.readline()
      return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, code: int, body: bytes = b"", headers: dict | None = None,
              content_type: str = "application/json") -> None:
      self.send_response(code)
      for k, v in (headers or {}).items():
        self.send_header(k, v)
      if code not in (204, 304):
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
      else:
        self.send_header("Content-Length", "0")
      self.end_headers()
      if body and code not in (204, 304) and self.command != "HEAD":
        self.wfile.write(body)

    def _json(self, code: int, obj, headers: dict | None = None) -> None:
      self._send(code, json.dumps(obj).encode(), headers)

    def _error(self, code: int, message: str) -> None:
      if code == 304:
        self._send(304)
      else:
        self._json(code, {"error": {"code": code, "message": message,
                                    "errors": [{"message": message, "reason": "fake"}]}})

    def _dispatch(self) -> None:
      with gcs.lock:
        gcs.requests += 1
      url = urllib.parse.urlsplit(self.path)
      query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
      parts = [urllib.parse.unquote(p) for p in url.path.split("/")[1:]]
      body = self._body() if self.command in ("POST", "PUT", "PATCH") else b""
      try:
        with gcs.lock:
          handled = self._route(parts, query, body)
        if not handled:
          gcs.unsupported.append(f"{self.command} {self.path}")
          self._error(501, f"fake GCS does not serve {self.command} {url.path}")
      except _Failure as e:
        self._error(e.code, e.message)
      except (BrokenPipeError, ConnectionResetError):
        pass    # the client hung up (e.g. it cancelled a read it no longer needs)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _dispatch

    # --- routes (called with the store locked) ------------------------------------------------
    def _route(self, parts: list[str], query: dict, body: bytes) -> bool:
      method = self.command
      if parts[:1] == ["download"]:
        parts = parts[1:]
        query = {**query, "alt": "media"}
      if parts[:3] == ["upload", "storage", "v1"] and len(parts) == 6 and parts[3] == "b" \
          and parts[5] == "o":
        return self._upload(parts[4], query, body)
      if parts[:2] != ["storage", "v1"] or len(parts) < 3 or parts[2] != "b":
        return False
      if len(parts) == 3 and method == "GET":
        self._json(200, {"kind": "storage#buckets",
                         "items": [{"kind": "storage#bucket", "name": b} for b in gcs.buckets]})
        return True
      bucket = parts[3]
      if len(parts) == 4 and method == "GET":
        if bucket not in gcs.buckets:
          raise _Failure(404, f"bucket {bucket} not found")
        self._json(200, {"kind": "storage#bucket", "name": bucket, "id": bucket,
                         "location": "US", "storageClass": "STANDARD"})
        return True
      if len(parts) == 5 and parts[4] == "o" and method == "GET":
        self._json(200, gcs._list(bucket, query))
        return True
      if len(parts) < 6 or parts[4] != "o":
        return False
      # The object name is one percent-encoded segment; an action may follow it.
      name, action = parts[5], parts[6:]
      if not action:
        return self._object(bucket, name, query, body)
      if action[0] in ("rewriteTo", "copyTo") and method == "POST" and len(action) == 5:
        dst_bucket, dst_name = action[2], action[4]
        src = gcs._get(bucket, name)
        gcs._check_preconditions(dst_bucket, dst_name, query, reading=False)
        obj = gcs._store(dst_bucket, dst_name, src.data, src.content_type, src.metadata)
        resource = gcs._resource(dst_bucket, dst_name, obj)
        if action[0] == "copyTo":
          self._json(200, resource)
        else:
          size = str(len(obj.data))
          self._json(200, {"kind": "storage#rewriteResponse", "done": True, "resource": resource,
                           "totalBytesRewritten": size, "objectSize": size})
        return True
      if action[0] == "moveTo" and method == "POST" and len(action) == 3:
        src = gcs._get(bucket, name)
        obj = gcs._store(bucket, action[2], src.data, src.content_type, src.metadata)
        del gcs.objects[(bucket, name)]
        self._json(200, gcs._resource(bucket, action[2], obj))
        return True
      if action == ["compose"] and method == "POST":
        request = json.loads(body or b"{}")
        data = b"".join(gcs._get(bucket, s["name"]).data for s in request["sourceObjects"])
        obj = gcs._store(bucket, name, data)
        self._json(200, gcs._resource(bucket, name, obj))
        return True
      return False

    def _object(self, bucket: str, name: str, query: dict, body: bytes) -> bool:
      method = self.command
      if method in ("GET", "HEAD"):
        gcs._check_preconditions(bucket, name, query, reading=True)
        obj = gcs._get(bucket, name)
        if query.get("alt") != "media":
          self._json(200, gcs._resource(bucket, name, obj))
          return True
        self._media(obj)
        return True
      if method == "DELETE":
        gcs._check_preconditions(bucket, name, query, reading=False)
        gcs._get(bucket, name)
        del gcs.objects[(bucket, name)]
        self._send(204)
        return True
      if method == "PATCH":
        obj = gcs._get(bucket, name)
        patch = json.loads(body or b"{}")
        obj.metadata = {**(obj.metadata or {}), **patch.get("metadata", {})}
        self._json(200, gcs._resource(bucket, name, obj))
        return True
      return False

    def _media(self, obj: _Object) -> None:
      data, size = obj.data, len(obj.data)
      headers = {"x-goog-generation": str(obj.generation), "x-goog-metageneration": "1",
                 "x-goog-stored-content-length": str(size),
                 "x-goog-stored-content-encoding": "identity",
                 "Last-Modified": time.strftime("%a, %d %b %Y %H:%M:%S GMT",
                                                time.gmtime(obj.updated))}
      match = _RANGE.match(self.headers.get("Range", "").strip())
      if not match:
        self._send(200, data, headers, "application/octet-stream")
        return
      first, last = match.groups()
      if first == "":                      # suffix range: the last N bytes
        start, stop = max(size - int(last or 0), 0), size
      else:
        start, stop = int(first), size if last == "" else min(int(last) + 1, size)
      if start >= size and size > 0:
        self._send(416, b"", {**headers, "Content-Range": f"bytes */{size}"})
        return
      headers["Content-Range"] = f"bytes {start}-{max(stop - 1, start)}/{size}"
      self._send(206, data[start:stop], headers, "application/octet-stream")

    def _upload(self, bucket: str, query: dict, body: bytes) -> bool:
      method, kind = self.command, query.get("uploadType", "")
      if "upload_id" in query:
        return self._resumable_chunk(query["upload_id"], body)
      if method != "POST":
        return False
      if kind == "media":
        name = query["name"]
        gcs._check_preconditions(bucket, name, query, reading=False)
        obj = gcs._store(bucket, name, body, self.headers.get("Content-Type", ""))
        self._json(200, gcs._resource(bucket, name, obj))
        return True
      if kind == "multipart":
        meta, data = _split_multipart(body, self.headers["Content-Type"])
        name = meta.get("name") or query["name"]
        gcs._check_preconditions(bucket, name, query, reading=False)
        obj = gcs._store(bucket, name, data, meta.get("contentType", ""), meta.get("metadata"))
        self._json(200, gcs._resource(bucket, name, obj))
        return True
      if kind == "resumable":
        meta = json.loads(body or b"{}")
        name = meta.get("name") or query["name"]
        gcs._check_preconditions(bucket, name, query, reading=False)
        upload_id = uuid.uuid4().hex
        gcs.uploads[upload_id] = {"bucket": bucket, "name": name, "data": bytearray(),
                                  "query": query, "metadata": meta.get("metadata")}
        location = (f"{gcs.url}/upload/storage/v1/b/{bucket}/o?uploadType=resumable"
                    f"&upload_id={upload_id}")
        self._send(200, b"", {"Location": location})
        return True
      return False

    def _resumable_chunk(self, upload_id: str, body: bytes) -> bool:
      upload = gcs.uploads.get(upload_id)
      if upload is None:
        raise _Failure(404, "no such upload")
      if self.command == "DELETE":
        del gcs.uploads[upload_id]
        self._send(204)
        return True
      match = _CONTENT_RANGE.match(self.headers.get("Content-Range", "bytes */*").strip())
      if match is None:
        raise _Failure(400, "bad Content-Range")
      first, _, total = match.groups()
      if first is not None:
        if int(first) != len(upload["data"]):
          raise _Failure(400, f"chunk at {first}, expected {len(upload['data'])}")
        upload["data"] += body
      if total != "*" and int(total) == len(upload["data"]):
        del gcs.uploads[upload_id]
        gcs._check_preconditions(upload["bucket"], upload["name"], upload["query"], reading=False)
        obj = gcs._store(upload["bucket"], upload["name"], upload["data"],
                         metadata=upload["metadata"])
        self._json(200, gcs._resource(upload["bucket"], upload["name"], obj))
        return True
      headers = {"Range": f"bytes=0-{len(upload['data']) - 1}"} if upload["data"] else {}
      self._send(308, b"", headers)
      return True

  return Handler
