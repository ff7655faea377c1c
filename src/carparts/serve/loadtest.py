"""Bounded load test of ``carparts serve`` on loopback: a fixed number of requests, then it stops by itself.

Usage: ``python -m carparts.serve.loadtest [--requests 500] [--concurrency 8] [--backend torch] [--md docs/service.md]``

It starts the server itself on a free 127.0.0.1 port, checks every bad input once, sends the requests from
``concurrency`` client threads, reads the server's RSS before and after, stops the server and writes a report.
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
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from carparts.benchmark import cpu_model

SAMPLES = Path(__file__).resolve().parents[1] / "assets" / "samples"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (uvicorn workers), in MB."""
    pids = [pid] + [
        int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    ]
    total = 0
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
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


def run(requests: int, concurrency: int, backend: str, workers: int, model: str | None) -> dict:
    port = free_port()
    command = [sys.executable, "-m", "carparts.cli", "serve", "--port", str(port), "--backend", backend]
    command += ["--workers", str(workers)] + (["--model", model] if model else [])
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=60) as client:
            for _ in range(600):
                try:
                    if client.get(f"{base}/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            else:
                raise RuntimeError("server did not start within 60 s")
            photos = [p.read_bytes() for p in sorted(SAMPLES.glob("*.jpg"))]
            client.post(f"{base}/v1/segment", content=photos[0])  # warm-up
            model_id = client.get(f"{base}/v1/model").json()["model_id"]
            rss_before = rss_mb(server.pid)
            bad = {}
            for label, body in bad_inputs().items():
                response = client.post(f"{base}/v1/segment", content=body)
                bad[label] = {"status": response.status_code, "error": response.json().get("error", "")[:120]}
            rss_after_bad = rss_mb(server.pid)

            def one(k: int) -> tuple[float, int]:
                start = time.perf_counter()
                try:
                    code = client.post(f"{base}/v1/segment", content=photos[k % len(photos)]).status_code
                except httpx.TransportError:
                    code = 0
                return time.perf_counter() - start, code

            started = time.perf_counter()
            with ThreadPoolExecutor(concurrency) as pool:
                results = list(pool.map(one, range(requests)))
            elapsed = time.perf_counter() - started
            rss_after = rss_mb(server.pid)
            alive = client.get(f"{base}/health").status_code == 200
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    latencies = np.array([r[0] for r in results]) * 1000
    return {
        "model": model_id,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "requests": requests,
        "concurrency": concurrency,
        "backend": backend,
        "workers": workers,
        "photo_sizes": sorted({Image.open(p).size for p in SAMPLES.glob("*.jpg")}),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "p95_ms": round(float(np.percentile(latencies, 95)), 1),
        "throughput_rps": round(requests / elapsed, 2),
        "errors": int(sum(code != 200 for _, code in results)),
        "rss_mb_before": round(rss_before, 1),
        "rss_mb_after_bad_inputs": round(rss_after_bad, 1),
        "rss_mb_after": round(rss_after, 1),
        "server_alive_after": alive,
        "bad_inputs": bad,
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }


def markdown(result: dict) -> str:
    bad_rows = "\n".join(f"| {label} | {r['status']} | {r['error']} |" for label, r in result["bad_inputs"].items())
    return f"""# carparts serve: load and bad-input figures

Measured by `python -m carparts.serve.loadtest --requests {result["requests"]} --concurrency {result["concurrency"]} \
--backend {result["backend"]} --workers {result["workers"]}` ({result["date"]}) on {result["machine"]}, loopback \
only. The server is `carparts serve` with model `{result["model"]}`; each request uploads one of the bundled
sample photos ({", ".join(f"{w}x{h}" for w, h in result["photo_sizes"])}) as the raw body and gets the JSON answer.

| requests | concurrent clients | p50 latency | p95 latency | throughput | errors | server RSS before → after |
|---|---|---|---|---|---|---|
| {result["requests"]} | {result["concurrency"]} | {result["p50_ms"]} ms | {result["p95_ms"]} ms | \
{result["throughput_rps"]} req/s | {result["errors"]} | {result["rss_mb_before"]} → {result["rss_mb_after"]} MB |

Requests are served one inference at a time per worker (a lock around the model), so with 8 clients on
2 cores latency grows with the queue while throughput stays at the model's rate.

## Bad inputs (each sent once before the load; the server kept serving)

| input | status | error message |
|---|---|---|
{bad_rows}

Server RSS after the bad inputs: {result["rss_mb_after_bad_inputs"]} MB (before: {result["rss_mb_before"]} MB).
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--backend", default="torch", choices=["torch", "onnx"])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--model")
    parser.add_argument("--json", default="docs/service.json")
    parser.add_argument("--md", default="docs/service.md")
    args = parser.parse_args(argv)
    result = run(args.requests, args.concurrency, args.backend, args.workers, args.model)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    Path(args.md).write_text(markdown(result))
    print(json.dumps({k: v for k, v in result.items() if k != "bad_inputs"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
