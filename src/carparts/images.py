"""Reading photos safely (EXIF, modes, size limits, damaged files) and writing outputs atomically."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from carparts.errors import CarpartsError, DamagedImageError, ImageTooLargeError, NotAnImageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
MAX_PIXELS = 60_000_000  # 60 MP: above any camera photo, far below what exhausts memory

# We enforce our own limit below with a readable message; PIL's bomb check would fire first otherwise.
Image.MAX_IMAGE_PIXELS = None


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read a photo as an RGB uint8 array (H, W, 3), upright as its EXIF orientation says.

    Grayscale, palette, RGBA (composited on white) and 16-bit inputs are converted to RGB. The pixel count
    is checked from the header before any pixels are decoded, so a decompression bomb costs nothing.

    Raises:
        CarpartsError: the file is missing, not an image, truncated, or too large.
    """
    path = Path(path)
    if not path.exists():
        raise CarpartsError(f"{path}: file not found")
    if path.is_dir():
        raise CarpartsError(f"{path}: is a folder, not an image")
    return decode_image(path, str(path), max_pixels)


def decode_image(source: Path | BinaryIO, label: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode a file path or binary stream like :func:`read_image`; ``label`` names it in errors."""
    try:
        with Image.open(source) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ImageTooLargeError(
                    f"{label}: image is {width}x{height} ({width * height / 1e6:.0f} MP), "
                    f"over the {max_pixels / 1e6:.0f} MP limit"
                )
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except UnidentifiedImageError:
        raise NotAnImageError(f"{label}: not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DamagedImageError(f"{label}: damaged or truncated image ({e})") from None


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    elif img.mode in ("I;16", "I;16B", "I;16L", "I"):
        scaled = np.asarray(img, dtype=np.float64)
        peak = max(float(scaled.max()), 1.0)
        img = Image.fromarray((scaled * (255.0 / (65535.0 if peak > 255 else 255.0))).clip(0, 255).astype(np.uint8))
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write a file through a temporary sibling and rename it, so a crash never leaves a half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def find_images(sources: list[str]) -> list[Path]:
    """Expand files, folders (searched recursively) and globs into a list of image paths.

    A source that matches nothing is kept as given, so that reading it reports a clear error.
    """
    found: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
        elif any(ch in source for ch in "*?["):
            root = Path(path.anchor) if path.is_absolute() else Path(".")
            pattern = str(path.relative_to(path.anchor)) if path.is_absolute() else source
            matches = sorted(p for p in root.glob(pattern) if p.is_file())
            found.extend(matches or [path])
        else:
            found.append(path)
    return found
