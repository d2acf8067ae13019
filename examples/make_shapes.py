"""Write examples/data/shapes/<circle|square|triangle>/*.png: drawn shapes of random size,
position, rotation and color on a noisy background, for examples/image_folder.yaml."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

SHAPES = ("circle", "square", "triangle")


def draw(shape: str, rng: np.random.Generator, size: int = 32):  # noqa: ANN201
    from PIL import Image, ImageDraw

    background = tuple(int(v) for v in rng.integers(0, 90, 3))
    im = Image.new("RGB", (size, size), background)
    noise = rng.integers(-20, 21, (size, size, 3))
    im = Image.fromarray(np.clip(np.asarray(im, dtype=np.int64) + noise, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    color = tuple(int(v) for v in rng.integers(140, 256, 3))
    r = rng.uniform(0.22, 0.38) * size
    cx, cy = rng.uniform(r + 1, size - r - 1, 2)
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    else:
        n = 4 if shape == "square" else 3
        turn = rng.uniform(0, 2 * math.pi)
        d.polygon(
            [
                (cx + r * math.cos(turn + 2 * math.pi * k / n), cy + r * math.sin(turn + 2 * math.pi * k / n))
                for k in range(n)
            ],
            fill=color,
        )
    return im


def make(out: Path, per_class: int = 100, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for shape in SHAPES:
        folder = out / shape
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw(shape, rng).save(folder / f"{i:03d}.png")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(Path(__file__).parent / "data" / "shapes"))
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    make(Path(args.out), args.per_class, args.seed)
    print(f"wrote {args.per_class * len(SHAPES)} images to {args.out}")
