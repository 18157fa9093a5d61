"""On-the-fly augmentation of 2D training batches (slices or patches), on whole batches at once.

Flips on both in-plane axes, a rotation of +-15 degrees with a scale of 0.85-1.15 (probability
0.7), per-sequence intensity gain and shift, and noise (probability 0.2): the spatial and
intensity augmentations the strongest BraTS systems report (e.g. Isensee et al. 2018,
arXiv:1809.10483), in a form cheap enough for a CPU. Targets are channel masks warped with the
image: overlapping regions (each channel thresholded at 0.5) or a one-hot of exclusive classes
(each pixel takes the class with the largest share, so pixels where three labels meet keep a
tumor label); or ``None`` for patches whose target is the label of their centre pixel (a
rotation and scale about the patch centre keep that pixel where it is).

:func:`rotate_scale_blocks` gives 3D blocks the same rotation (in the axial plane) and scale; their
flips and intensity changes come from the block sampler's MONAI transforms.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def augment(
    x: torch.Tensor, y: torch.Tensor | None, generator: torch.Generator, sequences: int, exclusive: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Augmented copies of ``x`` ``(B, C, H, W)`` and target masks ``y`` ``(B, K, H, W)`` (or None); ``exclusive``:
    ``y`` is a one-hot of classes, channel 0 background."""
    b = x.shape[0]
    for dim in (2, 3):
        flip = torch.rand(b, generator=generator) < 0.5
        x[flip] = x[flip].flip(dim)
        if y is not None:
            y[flip] = y[flip].flip(dim)
    theta = torch.cat([rotation_scale_matrices(b, generator), torch.zeros(b, 2, 1)], dim=2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if y is not None:
        warped = F.grid_sample(y, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        y = one_hot(warped.argmax(dim=1), y.shape[1]) if exclusive else (warped > 0.5).float()
    brain = (x != 0).float()
    groups = x.view(b, -1, sequences, *x.shape[2:])  # (B, slices, sequences, H, W)
    gain = 1 + 0.1 * torch.randn(b, 1, sequences, 1, 1, generator=generator)
    shift = 0.1 * torch.randn(b, 1, sequences, 1, 1, generator=generator)
    x = (groups * gain + shift).view_as(x) * brain
    noisy = (torch.rand(b, 1, 1, 1, generator=generator) < 0.2).float()
    x = x + noisy * 0.05 * torch.randn(x.shape, generator=generator) * brain
    return x, y


def rotation_scale_matrices(b: int, generator: torch.Generator) -> torch.Tensor:
    """``(B, 2, 2)`` inverse maps of a rotation of +-15 degrees and a scale of 0.85-1.15, each applied with probability
    0.7 (identity otherwise): what :func:`torch.nn.functional.affine_grid` samples the output from."""
    apply = (torch.rand(b, generator=generator) < 0.7).float()
    angle = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(15) * apply
    scale = 1 + (torch.rand(b, generator=generator) * 0.3 - 0.15) * apply
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    return torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)


def rotate_scale_blocks(x: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks ``(B, C, x, y, z)`` (canonical RAS) and their internal labels ``(B, x, y, z)`` rotated about the z
    (superior) axis and scaled in all three axes about the block centre; voxels brought in from outside the block are
    background (0, as outside the brain). Images are interpolated linearly, labels by nearest neighbour."""
    b = x.shape[0]
    in_plane = rotation_scale_matrices(b, generator)
    scale_z = in_plane.det().abs().sqrt()  # the in-plane scale (1/s): scale z alike, so the block scales isotropically
    theta = torch.zeros(b, 3, 4)
    # affine_grid orders coordinates last axis first: (z, y, x) of a canonical (x, y, z) block
    theta[:, 0, 0] = scale_z
    theta[:, 1:, 1:3] = in_plane.flip(1, 2)  # the (y, x) block of the map; flipping both axes keeps it a rotation
    grid = F.affine_grid(theta, [b, 1, *x.shape[2:]], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    labels = F.grid_sample(labels[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return x, labels[:, 0].to(torch.uint8)


def one_hot(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Internal labels ``(B, H, W)`` -> float one-hot ``(B, classes, H, W)``."""
    return F.one_hot(labels.long(), classes).movedim(-1, 1).float()


def from_one_hot(masks: torch.Tensor) -> torch.Tensor:
    """One-hot masks ``(B, K, H, W)`` -> labels ``(B, H, W)``."""
    return masks.argmax(dim=1)
