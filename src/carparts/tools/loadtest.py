"""Bounded load test of ``carparts serve`` on loopback: a fixed number of requests, then it stops by itself.

Usage: ``python -m carparts.tools.loadtest [--requests 500] [--concurrency 8] [--workers 1,2] [--md docs/service.md]``

For each worker count, one after the other, it starts ``carparts serve --workers N`` on a free 127.0.0.1 port,
checks every bad input once, sends the requests from ``concurrency`` client threads while timing ``/health``,
reads the server's memory before and after and stops the server; then it writes one report of all the runs.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from carparts.paths import SAMPLES
from carparts.tools.benchmark import cpu_model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pss_mb(pid: int) -> float:
    """Memory of a process and its children (uvicorn workers), in MB: proportional set size, so the library pages
    the processes share count once in the sum, not once per process as resident memory would."""
    pids = [pid] + [
        int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    ]
    total = 0
    for p in pids:
        for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1])
    return total / 1024


def png_header_bomb(width: int, height: int) -> bytes:
    """A valid PNG whose header declares ``width`` x ``height`` pixels, with almost no data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + idat + chunk(b"IEND", b"")


def bad_inputs() -> dict[str, bytes]:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (80, 80, 80)).save(buffer, format="JPEG")
    good = buffer.getvalue()
    return {
        "empty body": b"",
        "text, not an image": b"plain text pretending to be a photo",
        "truncated JPEG": good[: len(good) // 3],
        "40000x40000 PNG header (bomb)": png_header_bomb(40000, 40000),
        "25 MB upload (limit 20 MB)": b"\xff" * (25 * 1024 * 1024),
    }


def wait_until_up(client: httpx.Client, base: str, seconds: float = 300) -> None:
    """Poll ``/health`` until the server answers (several workers load the model one after another)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if client.get(f"{base}/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server did not start within {seconds:g} s")


def watch_health(base: str, stop: threading.Event, seconds: list[float]) -> None:
    """Time ``GET /health`` every 0.25 s until ``stop``: the event loop's answer time while photos are segmented."""
    with httpx.Client(timeout=60) as client:
        while not stop.wait(0.25):
            start = time.perf_counter()
            client.get(f"{base}/health")
            seconds.append(time.perf_counter() - start)


def measure(requests: int, concurrency: int, backend: str, workers: int, model: str | None) -> dict:
    """Start ``carparts serve --workers N``, send the bad inputs, then the load; the figures of that server."""
    port = free_port()
    command = [sys.executable, "-m", "carparts.cli", "serve", "--port", str(port), "--backend", backend]
    command += ["--workers", str(workers)] + (["--model", model] if model else [])
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=60) as client:
            wait_until_up(client, base)
            photos = [p.read_bytes() for p in sorted(SAMPLES.glob("*.jpg"))]
            for photo in photos[: 2 * workers]:  # warm-up, each worker at least once (most likely)
                client.post(f"{base}/v1/segment", content=photo)
            card = client.get(f"{base}/v1/model").json()
            pss_before = pss_mb(server.pid)
            bad = {}
            for label, body in bad_inputs().items():
                response = client.post(f"{base}/v1/segment", content=body)
                bad[label] = {"status": response.status_code, "error": response.json().get("error", "")[:120]}
            pss_after_bad = pss_mb(server.pid)

            def one(k: int) -> tuple[float, int]:
                start = time.perf_counter()
                try:
                    code = client.post(f"{base}/v1/segment", content=photos[k % len(photos)]).status_code
                except httpx.TransportError:
                    code = 0
                return time.perf_counter() - start, code

            stop, health_seconds = threading.Event(), []
            watcher = threading.Thread(target=watch_health, args=(base, stop, health_seconds))
            watcher.start()
            started = time.perf_counter()
            with ThreadPoolExecutor(concurrency) as pool:
                results = list(pool.map(one, range(requests)))
            elapsed = time.perf_counter() - started
            stop.set()
            watcher.join()
            pss_after = pss_mb(server.pid)
            alive = client.get(f"{base}/health").status_code == 200
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    latencies = np.array([r[0] for r in results]) * 1000
    health = np.array(health_seconds or [0.0]) * 1000
    return {
        "model": card["model_id"],
        "workers": workers,
        "threads_per_worker": card.get("threads"),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "p95_ms": round(float(np.percentile(latencies, 95)), 1),
        "throughput_rps": round(requests / elapsed, 2),
        "errors": int(sum(code != 200 for _, code in results)),
        "health_p95_ms": round(float(np.percentile(health, 95)), 1),
        "health_max_ms": round(float(health.max()), 1),
        "pss_mb_before": round(pss_before, 1),
        "pss_mb_after_bad_inputs": round(pss_after_bad, 1),
        "pss_mb_after": round(pss_after, 1),
        "server_alive_after": alive,
        "bad_inputs": bad,
    }


def run(requests: int, concurrency: int, backend: str, workers: Sequence[int], model: str | None) -> dict:
    """One server per worker count, one after the other on this machine, with the same load: the whole report."""
    runs = [measure(requests, concurrency, backend, n, model) for n in workers]
    return {
        "model": runs[0]["model"],
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "requests": requests,
        "concurrency": concurrency,
        "backend": backend,
        "photo_sizes": sorted({Image.open(p).size for p in SAMPLES.glob("*.jpg")}),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "runs": runs,
    }


def markdown(result: dict) -> str:
    """docs/service.md: the command, the machine, one row per worker count, and the bad inputs' answers."""
    runs = result["runs"]
    workers = ",".join(str(r["workers"]) for r in runs)
    rows = "\n".join(
        f"| {r['workers']} | {r['threads_per_worker']} | {r['p50_ms']} ms | {r['p95_ms']} ms | "
        f"{r['throughput_rps']} req/s | {r['errors']} | {r['health_p95_ms']} ms (max {r['health_max_ms']}) | "
        f"{r['pss_mb_before']} → {r['pss_mb_after']} MB |"
        for r in runs
    )
    labels = list(runs[0]["bad_inputs"])
    bad_rows = "\n".join(
        f"| {label} | {' | '.join(str(r['bad_inputs'][label]['status']) for r in runs)} | "
        f"{runs[0]['bad_inputs'][label]['error']} |"
        for label in labels
    )
    status_heads = " | ".join(f"status, {r['workers']} worker(s)" for r in runs)
    pss_bad = ", ".join(f"{r['pss_mb_after_bad_inputs']} MB with {r['workers']}" for r in runs)
    return f"""# carparts serve: load and bad-input figures

Measured by `python -m carparts.tools.loadtest --requests {result["requests"]} --concurrency {result["concurrency"]} \
--backend {result["backend"]} --workers {workers}` ({result["date"]}) on {result["machine"]}, loopback only, one \
server after the other. The server is `carparts serve --workers N` with model `{result["model"]}`; each request \
uploads one of the bundled sample photos ({", ".join(f"{w}x{h}" for w, h in result["photo_sizes"])}) as the raw \
body and gets the JSON answer, from {result["concurrency"]} client threads, {result["requests"]} requests per server.

| workers | threads each | p50 latency | p95 latency | throughput | errors | `/health` p95 under load | \
server memory (PSS) before → after |
|---|---|---|---|---|---|---|---|
{rows}

Each worker segments one photo at a time in a worker thread, with cores / workers torch threads (`--threads`
overrides), while its event loop only reads uploads and answers, so `/health` stays fast under load; up to
`--max-queue` requests wait per worker, more get 503 with `Retry-After`. Server memory sums every process's proportional
set size (the supervisor of several workers holds no model).

## Bad inputs (each sent once before the load; the server kept serving)

| input | {status_heads} | error message |
|---|{"---|" * len(runs)}---|
{bad_rows}

Server memory (PSS) after the bad inputs: {pss_bad} worker(s).
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--backend", default="torch", choices=["torch", "onnx"])
    parser.add_argument("--workers", default="1,2", help="worker counts to measure, one server each (default 1,2)")
    parser.add_argument("--model")
    parser.add_argument("--json", default="docs/service.json")
    parser.add_argument("--md", default="docs/service.md")
    args = parser.parse_args(argv)
    workers = [int(n) for n in args.workers.split(",")]
    result = run(args.requests, args.concurrency, args.backend, workers, args.model)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    Path(args.md).write_text(markdown(result))
    print(json.dumps([{k: v for k, v in r.items() if k != "bad_inputs"} for r in result["runs"]], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
