"""What a ``carparts serve`` worker builds its app from, and how those settings travel to worker processes.

Kept free of torch and FastAPI imports: the process that starts the workers reads it without loading a model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_MAX_QUEUE = 16  # requests waiting behind the one being processed, per worker
DEFAULT_BODY_TIMEOUT_S = 15.0  # longest silence while an upload is read

ENV_PREFIX = "CARPARTS_"


@dataclass(frozen=True)
class ServeSettings:
    """The arguments of :func:`carparts.serve.app.create_app` that a worker process gets from its parent."""

    model: str | None = None  # comma-separated: an ensemble
    backend: str = "torch"
    tta: bool = False
    input_size: tuple[int, ...] | None = None
    crop: str | None = None  # None: the model's own policy
    threads: int | None = None  # torch / onnxruntime threads of the worker (None: the libraries' default)
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    max_queue: int = DEFAULT_MAX_QUEUE
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S

    def to_env(self) -> dict[str, str]:
        """The ``CARPARTS_*`` variables :meth:`from_env` reads back; unset settings are left out."""
        values = {
            "MODEL": self.model,
            "BACKEND": self.backend,
            "TTA": str(int(self.tta)),
            "INPUT_SIZE": ",".join(str(size) for size in self.input_size) if self.input_size else None,
            "CROP": self.crop,
            "THREADS": str(self.threads) if self.threads else None,
            "MAX_UPLOAD_MB": str(self.max_upload_mb),
            "MAX_QUEUE": str(self.max_queue),
            "BODY_TIMEOUT_S": str(self.body_timeout_s),
        }
        return {ENV_PREFIX + key: value for key, value in values.items() if value is not None}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServeSettings:
        """Settings from ``CARPARTS_*`` variables (default: this process's); a variable not set keeps the default."""
        environ = os.environ if environ is None else environ

        def get(key: str) -> str | None:
            return environ.get(ENV_PREFIX + key) or None

        sizes, threads = get("INPUT_SIZE"), get("THREADS")
        return cls(
            model=get("MODEL"),
            backend=get("BACKEND") or "torch",
            tta=get("TTA") == "1",
            input_size=sizes_from_text(sizes) if sizes else None,
            crop=get("CROP"),
            threads=int(threads) if threads else None,
            max_upload_mb=float(get("MAX_UPLOAD_MB") or DEFAULT_MAX_UPLOAD_MB),
            max_queue=int(get("MAX_QUEUE") or DEFAULT_MAX_QUEUE),
            body_timeout_s=float(get("BODY_TIMEOUT_S") or DEFAULT_BODY_TIMEOUT_S),
        )


def sizes_from_text(text: str) -> tuple[int, ...]:
    """``"320,416"`` -> ``(320, 416)``."""
    return tuple(int(size) for size in text.split(","))
