import numpy as np

from carparts.classes import CARPARTS
from carparts.transforms import HorizontalFlipSwapLR, eval_transform, train_transform

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
