"""The image kind's explain hook: which pixels moved the prediction, as saliency maps.

The model's input is the normalised image ((x - training mean) / training std per channel),
so the baseline, the training mean colour, is 0 everywhere in that space. `ig`: Integrated
Gradients (Captum, float64, steps doubled per image until completeness is within 1%),
summed over the channels per pixel. `occlusion`: Captum's Occlusion, a square patch (an
eighth of the side) set to the baseline, sliding by half a patch. Each image gets a PNG:
the image, and the saliency overlaid on it (red: towards the target, blue: away).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from danlu.explain import Explanation, check_method, load_predictor, target_index
from danlu.explain import attribution as A
from danlu.fileio import atomic_path

METHODS = ("ig", "occlusion")
MAX_PNGS = 32  # saliency images written per call (the table has every row)


class ImageExplainer:
    methods = METHODS
    kind = "image"

    def __init__(self, predictor: Any) -> None:
        self.predictor, self.run = predictor, predictor.run
        self.pre, self.schema = predictor.preprocessor, predictor.schema
        self.model = copy.deepcopy(predictor.model).double().eval()
        self.png_dir: Path | None = None  # set by the command: where the saliency PNGs go

    def read(self, path: str | Path) -> pd.DataFrame:
        return self.pre.read(path)

    def split(self, name: str) -> pd.DataFrame:
        from danlu.explain import run_frames, split_rows

        return split_rows(run_frames(self.run, self.schema.task), name)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x=x)
        if self.schema.task == "classification":
            return (
                torch.cat([-out, out], dim=1) if getattr(self.predictor.task, "binary_logit", False) else out
            )
        scale = torch.tensor(self.pre.target_scale, dtype=out.dtype)
        return out * scale + torch.tensor(self.pre.target_center, dtype=out.dtype)

    def explain(self, rows: Any, method: str = "ig", target: Any = None, where: str = "input") -> Explanation:
        check_method(method, self.methods, self.kind)
        frame = self.predictor.frame(rows)
        from danlu.data import transforms as T

        raw = self.pre.load(list(frame[self.pre.column]), where)
        x = self.pre.to_model(raw).double()
        shown = T.center_crop(raw.float() / (255 if raw.dtype == torch.uint8 else 1), self.pre.size)
        with torch.no_grad():
            out = self.scores(x)
        t = target_index(self.schema, target, out.argmax(1))
        flat = x.flatten(1)
        a = A.Attributable(
            inputs=flat,
            baseline=torch.zeros(flat.shape[1], dtype=flat.dtype),
            forward=lambda z: self.scores(z.view(-1, *x.shape[1:])),
            groups=[],
            targets=t,
        )
        if method == "ig":
            r = A.integrated_gradients(a)
            maps = torch.as_tensor(r.attributions).view(x.shape).sum(1).numpy()
        else:
            from danlu.explain import captum_attr

            k = max(1, min(x.shape[-2:]) // 8)
            occ = (
                captum_attr()
                .Occlusion(self.scores)
                .attribute(
                    x,
                    sliding_window_shapes=(x.shape[1], k, k),
                    strides=(x.shape[1], max(1, k // 2), max(1, k // 2)),
                    baselines=0.0,
                    target=t,
                )
            )
            maps = occ.detach().sum(1).numpy()
            fx, fb = a.outputs(flat, t), a.outputs(torch.zeros_like(flat), t)
            r = A.Result(maps.reshape(len(x), -1), fx.numpy(), fb.numpy())
        labels = self.schema.class_names if self.schema.task == "classification" else self.schema.targets
        table: dict[str, Any] = {}
        if self.schema.task == "classification":
            table["prediction"] = np.asarray(self.schema.classes, dtype=object)[out.argmax(1).numpy()]
        table.update(target=np.asarray(labels, dtype=object)[t.numpy()], output=r.output)
        table["baseline_output"] = r.baseline_output
        if method == "ig":
            table["completeness_error"], table["steps"] = r.completeness_error, r.steps
        result = pd.DataFrame(table)
        if self.png_dir is not None:
            result["saliency_png"] = [
                str(save_overlay(shown[i], maps[i], self.png_dir / f"{i}.png", method))
                if i < MAX_PNGS
                else ""
                for i in range(len(x))
            ]
        from danlu.explain.tabular import summary

        info: dict[str, Any] = {"baseline": "the training mean colour (0 after normalisation)"}
        info.update(summary(result, method))
        if "saliency_png" in result:
            info["pngs"] = [p for p in result["saliency_png"] if p]
        importance = pd.Series(np.abs(maps).reshape(len(x), -1).sum(1), name="total |attribution|")
        importance.index = [f"image {i}" for i in range(len(x))]
        return Explanation(result, importance, method, info)


def save_overlay(image: torch.Tensor, saliency: np.ndarray, path: Path, method: str) -> Path:
    """The image beside the saliency overlaid on it, one PNG."""
    from matplotlib.figure import Figure

    img = image.permute(1, 2, 0).numpy()
    img = img[..., 0] if img.shape[-1] == 1 else img
    peak = float(np.abs(saliency).max()) or 1.0
    fig = Figure(figsize=(6, 3), layout="constrained")
    left, right = fig.subplots(1, 2)
    for ax in (left, right):
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        ax.axis("off")
    right.imshow(saliency, cmap="bwr", vmin=-peak, vmax=peak, alpha=0.6)
    left.set_title("image", fontsize=9)
    right.set_title(f"{method} saliency", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    return path


def explainer(run_dir: str | Path, trust_code: bool = False, loaded: Any = None) -> ImageExplainer:
    """The image kind's explain hook."""
    return ImageExplainer(loaded if loaded is not None else load_predictor(run_dir, trust_code))
