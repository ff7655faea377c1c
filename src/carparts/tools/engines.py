"""Throughput of the prediction engines on this machine: the local engine against the Ray engine with 1, 2...
workers, same photos, fresh outputs; writes ``docs/scale.json`` and ``docs/scale_figures.md``."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from carparts.images import write_atomic
from carparts.loading import load_predictor
from carparts.predict import predict_paths
from carparts.scale import list_images, predict_ray
from carparts.tools.benchmark import machine


def measure_engines(
    sources: list[str], model: str | None = None, backend: str = "torch", workers: tuple[int, ...] = (1, 2),
    out: Path = Path("docs/scale.json"), md: Path = Path("docs/scale_figures.md"),
) -> dict[str, Any]:  # fmt: skip
    """``carparts benchmark --engines SOURCE``: photos per second of the local engine and of the Ray engine
    with each number of ``workers`` (threads shared out over this machine's cores), same photos, fresh outputs.

    Each row gives the wall time of the whole command (Ray start, model loads) and the steady rate from the
    first finished photo to the last, which is what a long job converges to.
    """
    images = list_images(sources)
    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory(prefix="carparts-engines-") as tmp:
        start = time.perf_counter()
        predictor = load_predictor(model, backend, threads=cores)
        loaded = time.perf_counter()
        predict_paths(images, predictor, Path(tmp) / "local", progress=False)
        end = time.perf_counter()
        steady = len(images) / (end - loaded)
        rows.append({"engine": "local", "workers": 1, "threads_per_worker": cores, "images": len(images),
                     "wall_s": round(end - start, 2), "steady_img_s": round(steady, 3)})  # fmt: skip
        for n in workers:
            start = time.perf_counter()
            summary = predict_ray(images, Path(tmp) / f"ray{n}", model, backend, workers=n, progress=False)
            wall = time.perf_counter() - start
            steady = (summary["written"] - 1) / max(summary["seconds"] - summary.get("seconds_to_first", 0), 1e-9)
            rows.append({"engine": "ray", "workers": n, "threads_per_worker": summary["threads_per_worker"],
                         "images": len(images), "wall_s": round(wall, 2), "steady_img_s": round(steady, 3),
                         "failed": len(summary["failed"])})  # fmt: skip
    command = f"carparts benchmark --engines {' '.join(sources)} --backend {backend}"
    report = {"command": command, "machine": machine(cores), "backend": backend, "rows": rows}
    table = [
        f"Measured by `{command}` on {report['machine']['cpu']} ({cores} logical cores), {len(images)} photos, "
        f"backend {backend}, bundled model unless `--model` is given. Written by the command; do not edit.",
        "",
        "| engine | workers | threads per worker | photos | wall time (s) | steady rate (photos/s) |",
        "|---|---|---|---|---|---|",
    ] + [
        f"| {r['engine']} | {r['workers']} | {r['threads_per_worker']} | {r['images']} | {r['wall_s']} | "
        f"{r['steady_img_s']} |"
        for r in rows
    ]  # fmt: skip
    write_atomic(Path(out), lambda p: p.write_text(json.dumps(report, indent=2)))
    write_atomic(Path(md), lambda p: p.write_text("\n".join(table) + "\n"))
    print("\n".join(table))
    return report
