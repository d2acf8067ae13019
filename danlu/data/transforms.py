"""Image transforms on torch tensors (no torchvision): resize, crops, flips, rotation and
translation, color jitter and normalization.

Images are float tensors (C, H, W) or batches (B, C, H, W) with values in [0, 1].
Training augmentation works on whole batches: `Augment` draws each image's parameters from
a generator seeded by (seed, epoch, batch, rank), folds crop, flip, rotation and translation
into one affine map per image and samples the batch once with `grid_sample`, so it is fast
on CPU and GPU and a resumed run sees exactly the augmentation it would have seen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

# ITU-R 601-2 luma, as Pillow's convert("L")
GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def _batched(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    return (x, False) if x.ndim == 4 else (x.unsqueeze(0), True)


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize to (H, W); antialiased when shrinking, like Pillow's BILINEAR."""
    h, w = int(size[0]), int(size[1])
    if tuple(x.shape[-2:]) == (h, w):
        return x
    b, single = _batched(x)
    out = F.interpolate(b.float(), size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return out[0] if single else out


def center_crop(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    h, w = int(size[0]), int(size[1])
    height, width = x.shape[-2:]
    if (height, width) == (h, w):
        return x
    top, left = int(round((height - h) / 2)), int(round((width - w) / 2))
    return x[..., top : top + h, left : left + w]


def hflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


def to_gray(x: torch.Tensor) -> torch.Tensor:
    """(.., 3, H, W) RGB -> (.., 1, H, W) luma."""
    r, g, b = x.unbind(-3)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(-3)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - m) / s


def affine(x: torch.Tensor, theta: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Sample a batch through per-image affine maps theta (B, 2, 3) from output to input
    coordinates (normalized to [-1, 1], pixel edges at +-1); outside the image is 0."""
    grid = F.affine_grid(
        theta.to(x.dtype), [x.shape[0], x.shape[1], int(size[0]), int(size[1])], align_corners=False
    )
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * factor.view(-1, 1, 1, 1)).clamp(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each image with the mean of its gray version (as torchvision and Pillow do)."""
    gray = to_gray(x) if x.shape[1] == 3 else x
    mean = gray.mean(dim=(1, 2, 3), keepdim=True)
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * mean).clamp(0, 1)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    if x.shape[1] != 3:
        return x  # a gray image has no saturation
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * to_gray(x)).clamp(0, 1)


def batch_generator(seed: int, epoch: int, batch: int, rank: int = 0) -> torch.Generator:
    """The random stream of one training batch: a function of its position only."""
    key = ((seed * 1_000_003 + epoch) * 1_000_003 + batch) * 1_009 + rank
    return torch.Generator().manual_seed(key % (2**63))


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g, dtype=torch.float64)


class Augment:
    """Training augmentation of a batch (B, C, H_in, W_in) in [0, 1] -> (B, C, H, W).

    `cfg` is data.images.augment (ImageAugmentConfig); `size` is the model's input size.
    The geometric part (random crop, flip, rotation, translation) is one affine map per
    image; an input larger than `size` without a random crop is center-cropped."""

    def __init__(self, cfg: Any, size: Sequence[int]) -> None:
        self.cfg = cfg
        self.size = (int(size[0]), int(size[1]))

    @property
    def active(self) -> bool:
        c = self.cfg
        return bool(
            c.random_crop
            or c.hflip
            or c.rotation
            or c.translate
            or c.brightness
            or c.contrast
            or c.saturation
        )

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        c, (h, w) = self.cfg, self.size
        n, (height, width) = x.shape[0], x.shape[-2:]
        geometric = bool(c.random_crop or c.rotation or c.translate)
        flip = torch.rand(n, generator=g) < c.hflip if c.hflip else None
        if geometric:
            x = affine(x, self.theta(n, height, width, flip, g).to(x.device), (h, w))
        else:
            x = center_crop(x, (h, w))
            if flip is not None:
                x = torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)
        if c.brightness:
            x = adjust_brightness(x, _uniform(n, 1 - c.brightness, 1 + c.brightness, g).to(x))
        if c.contrast:
            x = adjust_contrast(x, _uniform(n, 1 - c.contrast, 1 + c.contrast, g).to(x))
        if c.saturation:
            x = adjust_saturation(x, _uniform(n, 1 - c.saturation, 1 + c.saturation, g).to(x))
        return x

    def theta(
        self, n: int, height: int, width: int, flip: torch.Tensor | None, g: torch.Generator
    ) -> torch.Tensor:
        """Per-image maps from output to input coordinates, in pixels about the image
        centers: input = (box center - input center) + S (R(angle) u + t), where u is an
        output pixel, S scales output pixels to the crop box's and t is the translation;
        then both sides are normalized to [-1, 1]."""
        c, (h, w) = self.cfg, self.size
        box_w = torch.full((n,), float(min(w, width)), dtype=torch.float64)
        box_h = torch.full((n,), float(min(h, height)), dtype=torch.float64)
        crop = c.random_crop
        if crop is not None and tuple(crop.scale) != (1.0, 1.0):  # random area and aspect ratio
            area = _uniform(n, crop.scale[0], crop.scale[1], g) * height * width
            log_ratio = _uniform(n, math.log(crop.ratio[0]), math.log(crop.ratio[1]), g)
            ratio = torch.exp(log_ratio)
            box_w = torch.sqrt(area * ratio).clamp(max=width)
            box_h = torch.sqrt(area / ratio).clamp(max=height)
        pad = crop.padding if crop is not None else 0
        if crop is not None:  # the box's top-left corner, anywhere inside the (padded) image
            if tuple(crop.scale) == (1.0, 1.0):  # whole pixels, so a plain crop stays exact
                left = torch.floor(_uniform(n, 0, width - box_w[0].item() + 2 * pad + 1, g)) - pad
                top = torch.floor(_uniform(n, 0, height - box_h[0].item() + 2 * pad + 1, g)) - pad
            else:
                left = _uniform(n, 0, 1, g) * (width - box_w + 2 * pad) - pad
                top = _uniform(n, 0, 1, g) * (height - box_h + 2 * pad) - pad
        else:
            left = torch.full((n,), float(round((width - box_w[0].item()) / 2)), dtype=torch.float64)
            top = torch.full((n,), float(round((height - box_h[0].item()) / 2)), dtype=torch.float64)
        cx = left + box_w / 2 - width / 2
        cy = top + box_h / 2 - height / 2
        sx, sy = box_w / w, box_h / h  # output pixels -> input pixels
        angle = (
            torch.deg2rad(_uniform(n, -c.rotation, c.rotation, g))
            if c.rotation
            else torch.zeros(n, dtype=torch.float64)
        )
        if c.translate:
            tx = _uniform(n, -c.translate, c.translate, g) * w
            ty = _uniform(n, -c.translate, c.translate, g) * h
        else:
            tx = ty = torch.zeros(n, dtype=torch.float64)
        cos, sin = torch.cos(angle), torch.sin(angle)
        fx = torch.where(flip, -1.0, 1.0).double() if flip is not None else torch.ones(n, dtype=torch.float64)
        # input_px = [cx, cy] + diag(sx, sy) (R [fx * u_x, u_y] + t), u_px = D_out u_n,
        # input_n = D_in^-1 input_px with D = diag(width / 2, height / 2)
        a11, a12 = sx * cos * fx * (w / 2), -sx * sin * (h / 2)
        a21, a22 = sy * sin * fx * (w / 2), sy * cos * (h / 2)
        theta = torch.stack(
            [
                torch.stack([a11 / (width / 2), a12 / (width / 2), (cx + sx * tx) / (width / 2)], dim=1),
                torch.stack([a21 / (height / 2), a22 / (height / 2), (cy + sy * ty) / (height / 2)], dim=1),
            ],
            dim=1,
        )
        return theta.float()
