"""Start ``carparts serve``: split the cores among the workers, check the model once, run uvicorn.

This module imports neither torch nor the app at load time, so the process that supervises several workers
never holds a model: it checks the model in a throw-away process and lets each worker load its own.
"""

from __future__ import annotations

import copy
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

from carparts.errors import CarpartsError
from carparts.serve.settings import DEFAULT_BODY_TIMEOUT_S, DEFAULT_MAX_QUEUE, ServeSettings


def cpu_cores() -> int:
    """Cores this process may run on: its affinity mask (a container's share), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Torch and onnxruntime threads for each of ``workers`` processes: the cores split evenly, at least one."""
    if workers < 1:
        raise CarpartsError(f"--workers must be at least 1, got {workers}")
    return max(1, (cores or cpu_cores()) // workers)


def check_model(settings: ServeSettings) -> str:
    """Load the model and segment a small blank photo; return the model id (a bad model raises, in one line)."""
    import numpy as np

    from carparts.loading import load_predictor

    predictor = load_predictor(
        settings.model, settings.backend, tta=settings.tta, input_size=settings.input_size, crop=settings.crop
    )
    predictor(np.zeros((48, 64, 3), dtype=np.uint8))
    return predictor.info.model_id


def absolute_models(model: str | None) -> str | None:
    """``--model`` with each comma-separated path made absolute, so that every worker finds the same files."""
    parts = [str(Path(part.strip()).resolve()) for part in (model or "").split(",") if part.strip()]
    return ",".join(parts) or None


def check_model_apart(settings: ServeSettings) -> str:
    """:func:`check_model` in a throw-away process, so that the model's memory goes with it; the model id."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(check_model, settings).result()


def log_config() -> dict[str, Any]:
    """uvicorn's logging set-up plus the ``carparts`` loggers (one line per client that went away, etc.)."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["carparts"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def serve(
    model: str | None, host: str, port: int, backend: str, workers: int, max_upload_mb: float, tta: bool = False,
    input_size: Sequence[int] | None = None, threads: int | None = None, max_queue: int = DEFAULT_MAX_QUEUE,
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S, crop: str | None = None,
) -> None:  # fmt: skip
    """Run uvicorn with ``workers`` processes of ``threads`` threads each (default: the cores split among them).

    One worker serves the model loaded here. With several, the model is first loaded in a throw-away process (a
    bad model fails fast, and no copy stays in this supervising process); each worker then loads its own
    through :func:`carparts.serve.app.app_from_env`.
    """
    import uvicorn

    cores_each = threads_per_worker(workers)  # also refuses --workers 0
    if threads is not None and threads < 1:
        raise CarpartsError(f"--threads must be at least 1, got {threads}")
    settings = ServeSettings(
        model=absolute_models(model),
        backend=backend,
        tta=tta,
        input_size=tuple(input_size) if input_size else None,
        crop=crop,
        threads=threads or cores_each,
        max_upload_mb=max_upload_mb,
        max_queue=max_queue,
        body_timeout_s=body_timeout_s,
    )
    if workers == 1:
        from carparts.serve.app import create_app

        uvicorn.run(create_app(**asdict(settings)), host=host, port=port, log_config=log_config())
        return
    model_id = check_model_apart(settings)
    print(f"{model_id}: {workers} workers x {settings.threads} thread(s) each", flush=True)
    # OpenMP reads this when a worker imports torch; set_num_threads in each worker covers the rest
    os.environ.update(settings.to_env(), OMP_NUM_THREADS=str(settings.threads))
    uvicorn.run(
        "carparts.serve.app:app_from_env", factory=True, host=host, port=port, workers=workers,
        log_config=log_config(),
    )  # fmt: skip
