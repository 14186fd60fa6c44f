"""Training-time augmentation: random shifts (pad and crop), the standard one for small images.

Flips and rotations are left out on purpose: they change what a digit or a character means. A shift
keeps the label of any image whose object is not at the border, and costs one gather per batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_shift(images: torch.Tensor, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """``images`` (N, C, H, W) each moved by a random whole number of pixels in ``[-pixels, pixels]``
    along each axis; the border is repeated into the gap (the background of digits, and of most
    photos at their edge, better than zeros after normalisation). ``pixels=0`` returns the input.

    The offsets are drawn from ``generator`` (a CPU generator: the same draws on every device)."""
    if pixels <= 0:
        return images
    count, _, height, width = images.shape
    padded = F.pad(images, (pixels,) * 4, mode="replicate")
    dy = torch.randint(0, 2 * pixels + 1, (count,), generator=generator).to(images.device)
    dx = torch.randint(0, 2 * pixels + 1, (count,), generator=generator).to(images.device)
    rows = dy[:, None] + torch.arange(height, device=images.device)  # (N, H) rows of the padded image
    cols = dx[:, None] + torch.arange(width, device=images.device)
    samples = torch.arange(count, device=images.device)[:, None, None, None]
    channels = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[samples, channels, rows[:, None, :, None], cols[:, None, None, :]]
