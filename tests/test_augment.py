"""Random shifts: each image moved as a whole, the border repeated, nothing else changed."""

import pytest
import torch

from edgefab.data.augment import random_shift


def _images() -> torch.Tensor:
    return torch.rand(64, 3, 9, 7, generator=torch.Generator().manual_seed(0))


def test_zero_pixels_returns_the_images():
    images = _images()
    assert random_shift(images, 0, torch.Generator()) is images


@pytest.mark.parametrize("pixels", [1, 2])
def test_each_image_is_its_padded_self_cropped_at_one_offset(pixels):
    images = _images()
    shifted = random_shift(images, pixels, torch.Generator().manual_seed(1))
    assert shifted.shape == images.shape
    padded = torch.nn.functional.pad(images, (pixels,) * 4, mode="replicate")
    offsets = set()
    for index, image in enumerate(shifted):
        crops = [
            (dy, dx)
            for dy in range(2 * pixels + 1)
            for dx in range(2 * pixels + 1)
            if torch.equal(padded[index, :, dy : dy + 9, dx : dx + 7], image)  # all channels alike
        ]
        assert crops, f"image {index} is no crop of its padded self"
        offsets.add(crops[0])
    assert len(offsets) > (2 * pixels + 1) ** 2 // 2  # offsets are drawn, not fixed


def test_the_generator_decides():
    images = _images()
    first = random_shift(images, 2, torch.Generator().manual_seed(3))
    again = random_shift(images, 2, torch.Generator().manual_seed(3))
    other = random_shift(images, 2, torch.Generator().manual_seed(4))
    assert torch.equal(first, again) and not torch.equal(first, other)
