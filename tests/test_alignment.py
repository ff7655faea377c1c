"""Masks line up with the photo pixel for pixel, through resizing, padding, flip TTA, ensembles and onnxruntime.

The network here echoes its input: each pixel gets the class of the nearest colour of a small palette (a 1x1
convolution, so its logits are linear in the colour), and the padding, black, is background. A photo of colour
bands then has a known mask. The bands' edges sit on the grid of every input size used, so bilinear resizing puts
each edge back on the same pixel, and any crop, flip or resize that is off by one pixel changes the mask.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from carparts.backend_onnx import OnnxPredictor, onnx_metadata
from carparts.classes import CARPARTS
from carparts.export import DYNAMIC_AXES
from carparts.models import ModelInfo
from carparts.predict import Ensemble, Predictor, preprocess

BACKGROUND, HOOD, TRUNK, WHEEL = 0, 13, 17, 18  # classes that stay themselves in a mirror image
PALETTE = {(0, 0, 0): BACKGROUND, (255, 255, 255): HOOD, (255, 0, 0): WHEEL, (0, 0, 255): TRUNK}
# (start, colour) of each band along an axis of that length; edges are multiples of 25 px: on every grid below
BANDS = {
    50: [(0, (255, 255, 255)), (25, (255, 0, 0))],
    200: [(0, (255, 255, 255)), (25, (255, 0, 0)), (75, (255, 255, 255)), (150, (0, 0, 255))],
}
# (resize, input_size): each maps 25 photo px to a whole number of network px on a 50 x 200 or 200 x 50 photo
POLICIES = [("letterbox", 64), ("letterbox", 96), ("stretch", 64), ("stretch", 48)]


class EchoNetwork(torch.nn.Module):
    """Logits from each pixel's colour alone: the palette class nearest to it wins; other classes never do."""

    def __init__(self, info: ModelInfo):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, info.taxonomy.num_classes, kernel_size=1)
        mean, std = torch.tensor(info.mean), torch.tensor(info.std)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.fill_(-1e3)
            for rgb, index in PALETTE.items():
                colour = (torch.tensor(rgb) / 255 - mean) / std  # as preprocess normalises it
                # -|x - c|^2 less the |x|^2 every class shares: linear in x
                self.conv.weight[index, :, 0, 0] = 2 * colour
                self.conv.bias[index] = -(colour**2).sum()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def echo_info(resize: str, input_size: int) -> ModelInfo:
    return ModelInfo(arch="echo", encoder="none", taxonomy=CARPARTS, input_size=input_size, resize=resize)


def echo(resize: str = "letterbox", input_size: int = 64, tta: bool = False) -> Predictor:
    info = echo_info(resize, input_size)
    return Predictor(EchoNetwork(info), info, tta=tta)


def banded_photo(height: int, width: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """A photo of colour bands across ``axis`` (0: rows, 1: columns) and the mask the echo network must give."""
    photo = np.zeros((height, width, 3), np.uint8)
    expected = np.zeros((height, width), np.uint8)
    for start, colour in BANDS[photo.shape[axis]]:
        band = (slice(start, None), slice(None)) if axis == 0 else (slice(None), slice(start, None))
        photo[band] = colour
        expected[band] = PALETTE[colour]
    return photo, expected


# a wide photo is padded below, a tall one on the right; bands across each axis catch a shift along it
PHOTOS = [(50, 200, 0), (50, 200, 1), (200, 50, 0), (200, 50, 1)]


def assert_aligned(predictor: Predictor) -> None:
    for height, width, axis in PHOTOS:
        photo, expected = banded_photo(height, width, axis)
        mask = predictor(photo)
        wrong = int((mask != expected).sum())
        assert mask.shape == expected.shape and wrong == 0, f"{height} x {width}, bands on axis {axis}: {wrong} px"


def test_banded_photos_hold_every_class_of_the_palette_but_background():
    for height, width, axis in PHOTOS:
        _, expected = banded_photo(height, width, axis)
        classes = {HOOD, WHEEL} if expected.shape[axis] == 50 else {HOOD, WHEEL, TRUNK}
        assert set(np.unique(expected).tolist()) == classes


@pytest.mark.parametrize("resize, input_size", POLICIES)
def test_plain_masks_line_up_pixel_for_pixel(resize, input_size):
    assert_aligned(echo(resize, input_size))


@pytest.mark.parametrize("resize, input_size", POLICIES)
def test_flip_tta_masks_line_up_pixel_for_pixel(resize, input_size):
    assert_aligned(echo(resize, input_size, tta=True))


@pytest.mark.parametrize("tta", [False, True])
def test_ensemble_masks_line_up_pixel_for_pixel(tta):
    # members at other sizes and policies meet on the largest member's grid
    assert_aligned(Ensemble([echo("letterbox", 64, tta), echo("letterbox", 96, tta)]))
    assert_aligned(Ensemble([echo("letterbox", 64, tta), echo("stretch", 48, tta)]))


def test_the_echo_network_sees_the_padding_as_background():
    # so that a crop taking in one row or column of padding shows up as background in the mask
    predictor = echo("letterbox", 64)
    x, (h, w) = preprocess(banded_photo(50, 200, 0)[0], predictor.info)
    assert (x.shape[2:], (h, w)) == ((32, 64), (16, 64))
    assert set(predictor.run(x)[0, :, h:].argmax(0).unique().tolist()) == {BACKGROUND}


@pytest.mark.parametrize("tta", [False, True])
def test_onnx_masks_line_up_pixel_for_pixel(tmp_path, tta):
    info = echo_info("letterbox", 64)
    path = tmp_path / "echo.onnx"
    torch.onnx.export(EchoNetwork(info), (torch.zeros(1, 3, 64, 64),), str(path), input_names=["image"],
                      output_names=["logits"], dynamic_axes=DYNAMIC_AXES, dynamo=False)  # fmt: skip
    proto = onnx.load(str(path))
    for key, value in onnx_metadata(info).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    predictor = OnnxPredictor(path, tta=tta)
    assert predictor.info == info
    assert_aligned(predictor)
    assert_aligned(Ensemble([predictor, echo("letterbox", 96, tta)]))
