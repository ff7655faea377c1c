import albumentations as A
import cv2
import numpy as np
import pytest

from carparts.classes import CARPARTS
from carparts.transforms import (
    EMPTY,
    BackdropFill,
    HorizontalFlipSwapLR,
    background_clutter,
    camera_blur,
    eval_transform,
    train_transform,
)

LEFT, RIGHT = CARPARTS.names.index("front_left_door"), CARPARTS.names.index("front_right_door")
HOOD = CARPARTS.names.index("hood")


def test_flipped_left_door_becomes_right_door():
    image = np.zeros((4, 6, 3), dtype=np.uint8)
    mask = np.zeros((4, 6), dtype=np.uint8)
    mask[:, :2] = LEFT
    mask[0, 5] = HOOD
    out = HorizontalFlipSwapLR(CARPARTS.flip_permutation, p=1.0)(image=image, mask=mask)
    flipped = out["mask"]
    assert (flipped[:, 4:] == RIGHT).all()
    assert flipped[0, 0] == HOOD
    assert not (flipped == LEFT).any()


def test_train_pipeline_flip_keeps_sides_consistent():
    # a left door on the image's right half must never come out as a left door on the left half
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[:, 16:] = 255
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[:, 16:] = LEFT
    pipeline = train_transform(32, CARPARTS.flip_permutation, level="flip")
    seen = set()
    for _ in range(20):
        out = pipeline(image=image, mask=mask)
        bright_side = out["image"][0, 0, 31] > 0
        label = int(out["mask"][0, 31 if bright_side else 0])
        seen.add((bool(bright_side), label))
    assert seen == {(True, LEFT), (False, RIGHT)}


def zoom_out_then_fill(p: float) -> A.Compose:
    """A half-size zoom-out leaving an EMPTY border, then :class:`BackdropFill` with paste chance ``p``."""
    return A.Compose([
        A.Affine(scale=0.5, p=1.0, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=EMPTY),
        BackdropFill(A.Compose([]), p=p),
    ])  # fmt: skip


def grey_door(value: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((32, 32, 3), value, np.uint8), np.full((32, 32), LEFT, np.uint8)


def test_backdrop_fill_shows_another_photo_and_its_labels_in_the_empty_border():
    image, mask = grey_door(100)
    out = zoom_out_then_fill(p=1.0)(
        image=image, mask=mask, backdrop=lambda rng: (np.full_like(image, 200), mask * 0 + HOOD)
    )
    assert out["mask"][0, 0] == HOOD and (out["image"][0, 0] == 200).all()  # the border: the backdrop
    assert out["mask"][16, 16] == LEFT and (out["image"][16, 16] == 100).all()  # the zoomed-out car
    assert set(np.unique(out["mask"])) == {LEFT, HOOD}


def test_backdrop_fill_without_a_paste_leaves_black_background_and_no_empty_label():
    image, mask = grey_door(100)
    out = zoom_out_then_fill(p=0.0)(image=image, mask=mask, backdrop=lambda rng: pytest.fail("drew a backdrop"))
    assert out["mask"][0, 0] == 0 and (out["image"][0, 0] == 0).all()
    assert set(np.unique(out["mask"])) == {0, LEFT}


def test_backdrop_fill_draws_no_photo_when_nothing_is_empty():
    image, mask = grey_door(100)
    fill = A.Compose([BackdropFill(A.Compose([]), p=1.0)])
    out = fill(image=image, mask=mask, backdrop=lambda rng: pytest.fail("drew a backdrop"))
    assert (out["mask"] == LEFT).all() and (out["image"] == 100).all()


@pytest.mark.parametrize("level", ["paste", "clutter"])
def test_backdrop_pipelines_never_let_the_empty_value_reach_the_loss(level):
    image, mask = grey_door(100)  # grey normalises below zero in every channel, black too
    other, other_mask = np.full_like(image, 200), np.zeros_like(mask)  # 200 normalises above zero
    other_mask[12:20, 12:20] = HOOD
    pipeline = train_transform(32, CARPARTS.flip_permutation, level=level)
    shown = 0
    for _ in range(30):
        out = pipeline(image=image, mask=mask, backdrop=lambda rng: (other, other_mask))
        labels = set(out["mask"].unique().tolist())
        assert labels <= {0, LEFT, RIGHT, HOOD}  # EMPTY never; the door's side follows the flip
        assert level == "paste" or HOOD not in labels  # clutter shows none of the other photo's parts
        shown += bool(out["image"][:, 0, 0].max() > 0)
    assert 0 < shown < 30  # zoom-outs happen, and about half of them show the other photo in the corner


def test_background_clutter_shows_only_what_lies_beside_the_parts():
    image = np.full((40, 40, 3), 50, np.uint8)
    image[:, :24] = 120  # the widest part-free strip: left of the car
    image[:, 30:] = 230  # right of the car: narrower
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 24:30] = HOOD
    image[mask > 0] = 0
    clutter = background_clutter(image, mask, 32, 32, np.random.default_rng(0))
    assert clutter.shape == (32, 32, 3) and set(np.unique(clutter)) == {120}
    mask[:, 2:38] = HOOD  # the car fills the photo: no strip holds an eighth of it
    assert background_clutter(image, mask, 32, 32, np.random.default_rng(0)) is None


def test_clutter_fill_labels_the_border_background():
    image, mask = grey_door(100)
    backdrop = np.full_like(image, 200)
    backdrop[8:24, 8:24] = 0
    fill = A.Compose([
        A.Affine(scale=0.5, p=1.0, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=EMPTY),
        BackdropFill(None, p=1.0),
    ])  # fmt: skip
    backdrop_mask = np.zeros_like(mask)
    backdrop_mask[8:24, 8:24] = HOOD
    out = fill(image=image, mask=mask, backdrop=lambda rng: (backdrop, backdrop_mask))
    assert out["mask"][0, 0] == 0 and (out["image"][0, 0] == 200).all()  # the other photo's surroundings
    assert set(np.unique(out["mask"])) == {0, LEFT}  # none of its parts


def test_eval_letterbox_keeps_aspect_and_pads():
    image = np.full((50, 100, 3), 200, dtype=np.uint8)
    mask = np.ones((50, 100), dtype=np.uint8)
    out = eval_transform(64)(image=image, mask=mask)
    assert tuple(out["image"].shape) == (3, 64, 64)
    assert out["mask"][:32].min() == 1 and out["mask"][32:].max() == 0


def test_importing_carparts_keeps_albumentations_off_the_network():
    import os
    import subprocess
    import sys

    code = (
        "import os, urllib.request\n"
        "def refuse(*args, **kwargs):\n"
        "    os._exit(3)  # albumentations swallows exceptions from its version check\n"
        "urllib.request.OpenerDirector.open = refuse\n"
        "import carparts.transforms\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "NO_ALBUMENTATIONS_UPDATE"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == ""


def edge_photo() -> tuple[np.ndarray, np.ndarray]:
    """A hard black/white edge down the middle, the white half labelled a left door."""
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[:, 32:] = 255
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:, 32:] = LEFT
    return image, mask


def test_camera_blur_softens_the_edge_and_leaves_the_labels_sharp():
    image, mask = edge_photo()
    for seed in range(6):  # motion or defocus, whichever the draw picks
        out = A.Compose([camera_blur(1.0)], seed=seed)(image=image, mask=mask)
        assert ((out["image"] > 0) & (out["image"] < 255)).any(), "no grey pixel: the edge was not blurred"
        assert (out["mask"] == mask).all()


def test_train_pipeline_blurs_only_when_asked():
    image, mask = edge_photo()

    def greys(blur: float) -> int:
        pipeline = train_transform(64, CARPARTS.flip_permutation, level="flip", mean=(0, 0, 0), std=(1, 1, 1),
                                   blur=blur)  # fmt: skip
        pipeline.set_random_seed(0)
        row = pipeline(image=image, mask=mask)["image"][0, 8]
        return int(((row > 0.01) & (row < 0.99)).sum())

    assert greys(0.0) == 0
    assert greys(1.0) > 0
