import numpy as np
import pytest
from PIL import Image

from carparts.errors import CarpartsError
from carparts.images import read_image, scan_images, write_atomic


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(path, exif=exif)
    assert read_image(path).shape == (40, 20, 3)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_modes_become_rgb(tmp_path, mode):
    path = tmp_path / f"img_{mode.replace(';', '')}.png"
    Image.new(mode, (7, 5)).save(path)
    out = read_image(path)
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8


def test_rgba_is_composited_on_white(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (3, 3), (0, 0, 0, 0)).save(path)
    assert read_image(path).min() == 255


def test_missing_file(tmp_path):
    with pytest.raises(CarpartsError, match="nope.jpg: file not found"):
        read_image(tmp_path / "nope.jpg")


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("hello")
    with pytest.raises(CarpartsError, match="notes.jpg: not an image"):
        read_image(path)


def test_truncated_jpeg(tmp_path):
    full = tmp_path / "full.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(full)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.read_bytes()[:600])
    with pytest.raises(CarpartsError, match="cut.jpg: damaged or truncated"):
        read_image(cut)


def test_huge_image_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("1", (12000, 10000)).save(path)  # 120 MP, a few kB on disk
    with pytest.raises(CarpartsError, match="bomb.png: image is 12000x10000 .* over the 60 MP limit"):
        read_image(path)


def test_scan_images_expands_folders_and_globs(tmp_path):
    for name in ["a.jpg", "b.png", "c.txt", "sub/d.JPG"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in scan_images([str(tmp_path)]).paths] == ["a.jpg", "b.png", "d.JPG"]
    assert [p.name for p in scan_images([str(tmp_path / "*.png")]).paths] == ["b.png"]
    assert scan_images([str(tmp_path / "*.gif")]).paths == [tmp_path / "*.gif"]


def test_write_atomic_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")

    def fail(p):
        p.write_text("half")
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        write_atomic(path, fail)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_scan_names_skipped_files_and_leaves_out_excluded_folders(tmp_path):
    for name in ["a.jpg", "b.gif", "c.heic", "README", "sub/d.png", "out/a.png", "out/a_overlay.jpg"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    scan = scan_images([str(tmp_path)], exclude=[tmp_path / "out"])
    assert [p.relative_to(tmp_path).as_posix() for p in scan.paths] == ["a.jpg", "sub/d.png"]
    assert scan.skipped_note() == "skipped 3 files that are not images: README, b.gif, c.heic"
    assert scan_images([str(tmp_path / "**" / "*.png")], exclude=[tmp_path / "out"]).paths == [tmp_path / "sub/d.png"]
    assert scan_images([str(tmp_path / "sub")]).skipped_note() is None
    (tmp_path / "sub" / "e.gif").write_bytes(b"x")
    assert scan_images([str(tmp_path / "sub")]).skipped_note() == "skipped 1 file that is not an image: e.gif"
    assert scan_images([str(tmp_path / "out" / "a.png")], exclude=[tmp_path / "out"]).paths == [tmp_path / "out/a.png"]
