"""HTTP search service under load: queries/s and latency from N concurrent clients, with and
without micro-batching.

Setup (unless --index is given): the network of `--config` (default `lfw`: the half-width
ResNet-18 at 64 px that configs/lfw.py trains) with random weights, saved and exported with
`facetriplet.training.export.export_model` with each --detectors crop (`yunet` is what users get;
`none` leaves only the model's cost); a gallery of drawn faces (`facetriplet.synthetic`,
--identities x --photos JPEGs of --photo_size px, the size of an LFW photo) indexed with
`build_gallery_index`. Queries are new photos of gallery identities (same generator, unseen
photo numbers), JPEG quality 90, sent as multipart uploads with k=--k.

The server is `facetriplet-serve` in its own process on 127.0.0.1 (a free port), started once per
mode: `batched` (micro-batching, --batch_window_ms, --max_batch) and `unbatched`
(--nomicro_batch: one model call per request). For each --clients value, that many threads (one
keep-alive http.client connection each) send --requests requests in all, after --warmup
requests per client that are not timed. Latency is per request as the client sees it; errors are
non-200 answers and broken connections; `per call` is search requests per model call (from
/healthz).

  python -m benchmarks.bench_serve                  # ~10 min on 2 cores
  python -m benchmarks.bench_serve --quick          # tiny model and gallery: ~1 min check
  python -m benchmarks.bench_serve --index=runs/index --queries=data/queries --clients=1,8

It writes benchmarks/results/serve.json (--name).
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Any, Sequence

import numpy as np

from benchmarks import common

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".pgm", ".ppm", ".tif", ".tiff")


def _ints(text: str) -> list[int]:
  return [int(x) for x in text.split(",") if x.strip()]


def _names(text: str) -> list[str]:
  return [x.strip() for x in text.split(",") if x.strip()]


def multipart(data: bytes, filename: str) -> tuple[bytes, str]:
  """A multipart/form-data body with the file field `image`, and its Content-Type."""
  boundary = uuid.uuid4().hex
  body = (
    f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"'
    f"\r\nContent-Type: image/jpeg\r\n\r\n"
  ).encode()
  body += data + f"\r\n--{boundary}--\r\n".encode()
  return body, f"multipart/form-data; boundary={boundary}"


def synthetic_queries(
  identities: int, photos: int, count: int, size: int, seed: int
) -> list[bytes]:
  """JPEGs of new photos (photo numbers >= `photos`) of the first gallery identities."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from facetriplet import synthetic  # pylint: disable=g-import-not-at-top

  people = min(identities, count)
  extra = -(-count // people)
  arrays, _ = synthetic.make_face_arrays(people, photos + extra, size, seed, jpeg=False)
  arrays = arrays.reshape(people, photos + extra, size, size, 3)[:, photos:]
  out = []
  for image in arrays.reshape(-1, size, size, 3)[:count]:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=90)
    out.append(buf.getvalue())
  return out


def folder_queries(folder: str, count: int) -> list[bytes]:
  paths = sorted(
    os.path.join(root, f)
    for root, _, files in os.walk(folder)
    for f in files
    if f.lower().endswith(IMAGE_EXTS)
  )[:count]
  if not paths:
    raise SystemExit(f"no images in --queries={folder}")
  out = []
  for path in paths:
    with open(path, "rb") as f:
      out.append(f.read())
  return out


def build_index(scratch: str, detector: str, args: argparse.Namespace) -> str:
  """Exports the --config network (random weights) with `detector` crops and indexes a drawn
  gallery with it; returns the index folder."""
  import keras  # pylint: disable=g-import-not-at-top
  from facetriplet import config_files, synthetic  # pylint: disable=g-import-not-at-top
  from facetriplet.data import faces  # pylint: disable=g-import-not-at-top
  from facetriplet.training import export  # pylint: disable=g-import-not-at-top
  from facetriplet.search import features, gallery  # pylint: disable=g-import-not-at-top
  from facetriplet.training import model as model_lib  # pylint: disable=g-import-not-at-top

  gallery_dir = os.path.join(scratch, "gallery")
  if not os.path.isdir(gallery_dir):
    synthetic.make_face_dataset(
      gallery_dir, args.identities, args.photos, args.photo_size, args.seed
    )
  config = config_files.load_config(args.config)
  config.model.weights = "none"
  keras.utils.set_random_seed(args.seed)
  size = args.crop_size or faces.CropSettings().crop_size
  model = model_lib.build_embedding_model(config, crop_size=size)
  checkpoint = os.path.join(scratch, "model.keras")
  model.save(checkpoint)
  export_dir = os.path.join(scratch, f"export_{detector}")
  export.export_model(
    checkpoint, export_dir, crop=faces.CropSettings(detector=detector, crop_size=size).to_dict()
  )
  extractor = features.make_extractor("embedding", export_dir)
  index_dir = os.path.join(scratch, f"index_{detector}")
  start = time.perf_counter()
  summary = gallery.build_gallery_index(
    extractor, gallery_dir, index_dir, progress=False, model_dir=export_dir, faces_mode="largest"
  )
  print(
    f"[{detector}] indexed {summary.items} photos of {args.photo_size} px with "
    f"{args.config} ({model.count_params():,} params, crop {size} px) in "
    f"{time.perf_counter() - start:.1f} s",
    flush=True,
  )
  return index_dir


class Server:
  """`facetriplet-serve` in its own process on a free port of 127.0.0.1."""

  def __init__(self, index_dir: str, micro_batch: bool, args: argparse.Namespace, log: str):
    cmd = [
      sys.executable,
      "-m",
      "facetriplet_tools.serve",
      f"--index={index_dir}",
      "--port=0",
      f"--batch_window_ms={args.batch_window_ms}",
      f"--max_batch={args.max_batch}",
      "--micro_batch" if micro_batch else "--nomicro_batch",
    ]
    self._log = open(log, "w", encoding="utf-8")  # pylint: disable=consider-using-with
    self.proc = subprocess.Popen(
      cmd,
      stdout=subprocess.PIPE,
      stderr=self._log,
      text=True,
      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    line = self.proc.stdout.readline()
    found = re.search(r"http://[^\s/]+:[0-9]+", line)
    if found is None:
      self.stop()
      raise SystemExit(f"the server did not start ({' '.join(cmd)}): see {log}")
    url = found.group(0)
    self.host, port = url.removeprefix("http://").rsplit(":", 1)
    self.port = int(port)

  def health(self) -> dict[str, Any]:
    import json  # pylint: disable=g-import-not-at-top

    conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
    try:
      conn.request("GET", "/healthz")
      return json.loads(conn.getresponse().read())
    finally:
      conn.close()

  def stop(self) -> None:
    if self.proc.poll() is None:
      self.proc.send_signal(signal.SIGINT)
      try:
        self.proc.wait(60)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait()
    self._log.close()


def load(
  server: Server,
  payloads: Sequence[tuple[bytes, str]],
  clients: int,
  requests: int,
  warmup: int,
  k: int,
) -> dict[str, Any]:
  """`requests` searches from `clients` threads; returns q/s, latency percentiles, errors."""
  lock = threading.Lock()
  state = {"next": 0, "errors": 0}
  latencies: list[float] = []
  barrier = threading.Barrier(clients + 1)

  def client(i: int) -> None:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=300)

    def one(n: int) -> tuple[bool, float]:
      nonlocal conn
      body, kind = payloads[n % len(payloads)]
      start = time.perf_counter()
      try:
        conn.request("POST", f"/search?k={k}", body, {"Content-Type": kind})
        resp = conn.getresponse()
        resp.read()
        ok = resp.status == 200
      except (OSError, http.client.HTTPException):
        ok = False
        conn.close()
        conn = http.client.HTTPConnection(server.host, server.port, timeout=300)
      return ok, time.perf_counter() - start

    for w in range(warmup):
      one(i * warmup + w)
    barrier.wait()
    while True:
      with lock:
        n = state["next"]
        state["next"] += 1
      if n >= requests:
        break
      ok, seconds = one(n + i)
      with lock:
        latencies.append(seconds)
        state["errors"] += not ok
    conn.close()

  threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
  for t in threads:
    t.start()
  barrier.wait()
  before = server.health()
  start = time.perf_counter()
  for t in threads:
    t.join()
  wall = time.perf_counter() - start
  after = server.health()
  calls = after["search_calls"] - before["search_calls"]
  served = after["search_requests"] - before["search_requests"]
  p50, p99 = np.percentile(np.asarray(latencies) * 1000, [50, 99])
  return {
    "qps": requests / wall,
    "p50": p50,
    "p99": p99,
    "errors": state["errors"],
    "per_call": served / calls if calls else 0.0,
  }


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--index", help="serve this index instead of building one")
  parser.add_argument("--queries", help="folder of query photos (default: drawn faces)")
  parser.add_argument("--config", default="lfw", help="network to export (random weights)")
  parser.add_argument(
    "--detectors",
    type=_names,
    default=["none", "yunet"],
    help="crop of each built index (one server pair per detector)",
  )
  parser.add_argument("--identities", type=int, default=200)
  parser.add_argument("--photos", type=int, default=5, help="gallery photos per identity")
  parser.add_argument("--photo_size", type=int, default=250)
  parser.add_argument(
    "--crop_size",
    type=int,
    default=0,
    help="stored crop side (default: facetriplet's default crop)",
  )
  parser.add_argument("--query_images", type=int, default=64, help="distinct query photos")
  parser.add_argument("--clients", type=_ints, default=[1, 4, 16])
  parser.add_argument("--requests", type=int, default=200, help="timed requests per run")
  parser.add_argument("--warmup", type=int, default=3, help="untimed requests per client")
  parser.add_argument("--k", type=int, default=10)
  parser.add_argument("--modes", type=_names, default=["batched", "unbatched"])
  parser.add_argument("--batch_window_ms", type=float, default=5.0)
  parser.add_argument("--max_batch", type=int, default=32)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workdir", help="keep the built model, gallery and indexes here")
  parser.add_argument("--name", default="serve", help="result name (results/<name>.json)")
  parser.add_argument(
    "--quick",
    action="store_true",
    help="tiny model and gallery, few requests: checks that the script runs",
  )
  args = parser.parse_args(argv)
  if args.quick:
    args.config, args.detectors, args.identities, args.photos = "lfw:smoke", ["none"], 12, 2
    args.photo_size, args.query_images, args.clients = 128, 8, [1, 4]
    args.requests, args.warmup = min(args.requests, 24), 1
  if set(args.modes) - {"batched", "unbatched"}:
    parser.error("--modes takes batched and/or unbatched")

  scratch = args.workdir or tempfile.mkdtemp(prefix="bench_serve_")
  os.makedirs(scratch, exist_ok=True)
  rows: list[list[Any]] = []
  try:
    if args.index:
      indexes = [("given", args.index)]
    else:
      indexes = [(d, build_index(scratch, d, args)) for d in args.detectors]
    images = (
      folder_queries(args.queries, args.query_images)
      if args.queries
      else synthetic_queries(
        args.identities, args.photos, args.query_images, args.photo_size, args.seed + 1
      )
    )
    payloads = [multipart(data, f"q{i}.jpg") for i, data in enumerate(images)]
    for detector, index_dir in indexes:
      for mode in args.modes:
        server = Server(
          index_dir, mode == "batched", args, os.path.join(scratch, f"server_{detector}_{mode}.log")
        )
        try:
          items = server.health()["items"]
          for clients in args.clients:
            r = load(server, payloads, clients, args.requests, args.warmup, args.k)
            rows.append(
              [
                detector,
                mode,
                clients,
                args.requests,
                round(r["qps"], 1),
                round(r["p50"], 1),
                round(r["p99"], 1),
                r["errors"],
                round(r["per_call"], 2),
              ]
            )
            print(
              f"[{detector}] {mode:9s} {clients:3d} clients: {r['qps']:7.1f} q/s, p50 "
              f"{r['p50']:7.1f} ms, p99 {r['p99']:7.1f} ms, {r['errors']} errors, "
              f"{r['per_call']:.2f} requests per model call",
              flush=True,
            )
        finally:
          server.stop()
  finally:
    if not args.workdir:
      shutil.rmtree(scratch, ignore_errors=True)
  source = (
    f"index {args.index}"
    if args.index
    else f"{args.identities} x {args.photos} drawn faces of {args.photo_size} px indexed with "
    f"the `{args.config}` network (random weights)"
  )
  queries = "from " + args.queries if args.queries else "new drawn photos of gallery identities"
  notes = (
    f"Server: `facetriplet-serve` in its own process on 127.0.0.1, {items} items ({source})"
    f"; batched = micro-batching with --batch_window_ms={args.batch_window_ms:g} "
    f"--max_batch={args.max_batch}, unbatched = --nomicro_batch. Clients: threads in the "
    f"benchmark process (same machine), one keep-alive connection each, {len(images)} "
    f"distinct JPEG queries ({queries}), "
    f"multipart upload, k={args.k}; {args.requests} timed requests per row after "
    f"{args.warmup} per client. Latency is what the client sees; `per call` = search "
    "requests answered per model call (1.0 unbatched). `none` crops the centred square "
    "(model cost only); a detector (`yunet`, the default, or `mtcnn`) finds and aligns each "
    "query face first, the photos of a micro-batch sent to it together."
  )
  path = common.write_result(
    args.name,
    "HTTP search service: micro-batching under concurrent load",
    [
      "crop",
      "mode",
      "clients",
      "requests",
      "queries_per_s",
      "p50_ms",
      "p99_ms",
      "errors",
      "per call",
    ],
    rows,
    notes,
  )
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
