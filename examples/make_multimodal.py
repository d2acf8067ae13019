"""Write examples/data/multimodal/rows.csv: customer rows with a short review (text) and
account numbers, for examples/multimodal.yaml.

The label needs both: a customer `renews` when their weekly usage is above a threshold
that the review sets: a happy customer renews unless they hardly use the product (usage
above its 25th percentile), an unhappy one only when they depend on it (above the 75th).
5% of the labels are flipped. The review alone or the usage alone is right about 3 times
in 4; a model that reads both, about 19 in 20. `tenure` is noise.

--images adds a `photo` column of drawn shapes (a circle or a square, 32x32 PNGs under
photos/) that takes the review's place in the rule: circle = happy (the review is noise).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

POSITIVE = ["great", "excellent", "love", "wonderful", "fantastic", "perfect", "happy", "superb"]
NEGATIVE = ["terrible", "awful", "hate", "broken", "useless", "poor", "disappointing", "worst"]
FILLER = ["the", "app", "service", "support", "team", "price", "update", "screen", "account", "delivery"]
FILLER += ["plan", "was", "is", "and", "it", "my", "with", "this", "for", "today", "really", "very", "so"]


def review(rng: np.random.Generator, positive: bool) -> str:
    words = list(rng.choice(FILLER, int(rng.integers(5, 11))))
    words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(POSITIVE if positive else NEGATIVE)))
    return " ".join(words)


def draw(shape: str, rng: np.random.Generator, size: int = 32):  # noqa: ANN201
    """A light circle or axis-aligned square of random size, place and color on a dark ground."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 60, 3)))
    r = rng.uniform(0.25, 0.4) * size
    cx, cy = rng.uniform(r + 1, size - r - 1, 2)
    box = [cx - r, cy - r, cx + r, cy + r]
    color = tuple(int(v) for v in rng.integers(150, 256, 3))
    (ImageDraw.Draw(im).ellipse if shape == "circle" else ImageDraw.Draw(im).rectangle)(box, fill=color)
    return im


def make(out: Path, rows: int = 1500, seed: int = 0, images: bool = False, noise: float = 0.05) -> Path:
    """Write out/rows.csv (and out/photos/*.png with images) and return the CSV's path."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    positive = rng.random(rows) < 0.5
    usage = rng.gamma(4.0, 2.5, rows).round(1)  # hours a week; median about 9
    light, heavy = np.quantile(usage, [0.25, 0.75])
    df = pd.DataFrame(
        {
            "review": [review(rng, p) for p in positive],
            "usage": usage,
            "tenure": rng.integers(1, 60, rows),
        }
    )
    happy = positive
    if images:
        (out / "photos").mkdir(exist_ok=True)
        circle = rng.random(rows) < 0.5
        paths = []
        for i, c in enumerate(circle):
            name = f"photos/{i:04d}.png"
            draw("circle" if c else "square", rng).save(out / name)
            paths.append(name)
        df["photo"] = paths
        df["shape"] = np.where(circle, "circle", "square")  # what is drawn; not an input
        happy = circle
    renews = usage > np.where(happy, light, heavy)
    flip = rng.random(rows) < noise
    df["renews"] = np.where(renews ^ flip, "yes", "no")
    path = out / "rows.csv"
    df.to_csv(path, index=False)
    return path


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).parent / "data" / "multimodal"))
    ap.add_argument("--rows", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", action="store_true", help="add a photo column of drawn shapes")
    args = ap.parse_args()
    path = make(Path(args.out), args.rows, args.seed, args.images)
    print(f"wrote {args.rows} rows to {path}")
