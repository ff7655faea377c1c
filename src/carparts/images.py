"""Reading photos safely (EXIF, modes, size limits, damaged files) and writing outputs atomically."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


@dataclass
class ImageScan:
    """What :func:`scan_images` found: the image paths, and the files of scanned folders that are not images."""

    paths: list[Path]
    skipped: list[Path]

    def skipped_note(self, examples: int = 3) -> str | None:
        """One line naming how many files were skipped, with a few examples; None when none were."""
        if not self.skipped:
            return None
        names = ", ".join(p.name for p in self.skipped[:examples]) + (", ..." if len(self.skipped) > examples else "")
        if len(self.skipped) == 1:
            return f"skipped 1 file that is not an image: {names}"
        return f"skipped {len(self.skipped)} files that are not images: {names}"


def scan_images(sources: Sequence[str | Path], exclude: Sequence[Path] = ()) -> ImageScan:
    """Expand files, folders (searched recursively) and globs into a list of image paths.

    A source that matches nothing is kept as given, so that reading it reports a clear error. Files found in
    folders that are not images (by suffix: ``.gif``, ``.heic``, no suffix...) are listed in ``skipped``.
    Folder scans and globs leave out everything under the ``exclude`` folders (predict's own output folder).
    """
    excluded = [Path(folder).resolve() for folder in exclude]

    def kept(path: Path) -> bool:
        if not excluded:
            return True
        resolved = path.resolve()
        return not any(resolved == folder or folder in resolved.parents for folder in excluded)

    found: list[Path] = []
    skipped: list[Path] = []
    for source in map(str, sources):
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and kept(p))
            found.extend(p for p in files if p.suffix.lower() in IMAGE_SUFFIXES)
            skipped.extend(p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES)
        elif any(ch in source for ch in "*?["):
            root = Path(path.anchor) if path.is_absolute() else Path(".")
            pattern = str(path.relative_to(path.anchor)) if path.is_absolute() else source
            matches = sorted(p for p in root.glob(pattern) if p.is_file())
            found.extend([p for p in matches if kept(p)] if matches else [path])
        else:
            found.append(path)
    return ImageScan(paths=found, skipped=skipped)


def check_output_folder(folder: Path) -> None:
    """Refuse, in one line, an output folder that cannot be made or written: an existing file, a path under a
    file, or a folder without write permission. Nothing is created."""
    for existing in (folder, *folder.parents):
        if not existing.exists():
            continue
        if not existing.is_dir():
            where = "is a file" if existing == folder else f"lies under {existing}, which is a file"
            raise CarpartsError(f"{folder}: {where}, not a folder; choose another output folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise CarpartsError(f"{folder}: no permission to write in {existing}")
        return
