"""The tabular kind's explain hook: rows of a table -> attributions per row and column.

The space attributed (`attributable`): the model's own inputs after preprocessing, in float64
(completeness to 1% on rows whose output barely moves needs more than float32's sums):
the scaled numeric columns, the one-hot columns, and for `data.encoding: embedding` each
category's embedding vector (looked up, then attributed like any input: the MLP's layers after
the lookup are the forward). A user column's attribution is the sum over its dimensions: a
number is one dimension, a one-hot column one per category, an embedded one `embedding_dim`.

The baseline is the training rows' mean in that space: 0 for standard-scaled numbers (the
training mean), the categories' training frequencies for one-hot columns, the mean embedding
for embedded ones. It is computed from the run's training split (re-read and re-split as in
training), so the run's data must be where its config says.

The output attributed: a class's logit (its score before the softmax; with bce_with_logits
the one logit, negated for the other class), by default the predicted class of each row; for
regression the prediction in the target's units (one target column: `--target` names others).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from danlu.errors import DanluError
from danlu.explain import Explanation, check_method, load_predictor, run_frames, split_rows, target_index
from danlu.explain import attribution as A

METHODS = ("ig", "shap", "occlusion", "permutation")


class TabularExplainer:
    """Explains a tabular run's Predictor (danlu/predict.py); built by the kind's explain hook."""

    methods = METHODS
    kind = "tabular"

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor
        self.run = predictor.run
        self.pre = predictor.preprocessor
        self.schema = predictor.schema
        self.model = copy.deepcopy(predictor.model).double().eval()
        self._baseline: torch.Tensor | None = None
        self._frames: dict[str, pd.DataFrame] | None = None

    # ---- the space attributed
    def encode(self, frame: pd.DataFrame, where: str = "input") -> torch.Tensor:
        """Raw rows -> (N, D) float64: scaled numbers, one-hot columns, then embeddings."""
        inputs = self.pre.transform(frame, where)
        z = [inputs["x"].double()]
        embeddings = getattr(self.model, "embeddings", None)
        if "x_cat" in inputs:
            if embeddings is None or len(embeddings) != inputs["x_cat"].shape[1]:
                raise DanluError(
                    f"explain: model '{type(self.model).__name__}' takes embedded categories in a way"
                    " danlu cannot attribute; the mlp model (or data.encoding: onehot) can be explained"
                )
            with torch.no_grad():
                z += [e(inputs["x_cat"][:, i]) for i, e in enumerate(embeddings)]
        return torch.cat(z, dim=1)

    def scores(self, z: torch.Tensor) -> torch.Tensor:
        """(n, D) -> the outputs attributed (n, K): logits, or predictions in target units."""
        model = self.model
        embedded = self.pre.encoding == "embedding" and self.pre.categorical
        # embedded categories: z holds the looked-up vectors, so the MLP's layers after the lookup
        out = model.head(model.blocks(z)) if embedded else model(x=z)
        if self.schema.task == "classification":
            return (
                torch.cat([-out, out], dim=1) if getattr(self.predictor.task, "binary_logit", False) else out
            )
        return out * torch.tensor(self.pre.target_scale, dtype=z.dtype) + torch.tensor(
            self.pre.target_center, dtype=z.dtype
        )

    def groups(self) -> list[tuple[str, list[int]]]:
        """Each feature column (in the user's order) -> its dimensions of the encoded rows."""
        dims: dict[str, list[int]] = {}
        j = 0
        for c in self.pre.numeric:
            dims[c], j = [j], j + 1
        if self.pre.encoding == "onehot":
            for c in self.pre.categorical:
                n = len(self.pre.categories[c])
                dims[c], j = list(range(j, j + n)), j + n
        else:
            for c, e in zip(self.pre.categorical, getattr(self.model, "embeddings", []), strict=False):
                dims[c], j = list(range(j, j + e.embedding_dim)), j + e.embedding_dim
        return [(c, dims[c]) for c in self.pre.features]

    def frames(self) -> dict[str, pd.DataFrame]:
        if self._frames is None:
            self._frames = run_frames(self.run, self.schema.task)
        return self._frames

    def baseline(self) -> torch.Tensor:
        """The mean training row in the encoded space (the module docstring says why)."""
        if self._baseline is None:
            train = self.frames()["train"]
            self._baseline = self.encode(train, "train split").mean(0)
        return self._baseline

    def target_index(self, target: Any, z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return target_index(self.schema, target, self.scores(z).argmax(1))

    def attributable(self, frame: pd.DataFrame, target: Any = None, where: str = "input") -> A.Attributable:
        z = self.encode(frame, where)
        return A.Attributable(
            inputs=z,
            baseline=self.baseline(),
            forward=self.scores,
            groups=self.groups(),
            targets=self.target_index(target, z),
        )

    # ---- explaining
    def explain(
        self, rows: Any, method: str = "ig", target: Any = None, where: str = "input", **options: Any
    ) -> Explanation:
        check_method(method, self.methods, self.kind)
        frame = self.predictor.frame(rows)
        if method == "permutation":
            return self.permutation(frame, where, **options)
        a = self.attributable(frame, target, where)
        info: dict[str, Any] = {
            "baseline": "mean of the training rows after scaling (see danlu/explain/tabular.py)"
        }
        if method == "ig":
            r = A.integrated_gradients(a, **options)
        elif method == "shap" and len(a.groups) <= A.MAX_EXACT:
            r, info["shap"] = A.exact_shapley(a), "exact (every coalition)"
        elif method == "shap":
            r = A.kernel_shap(a, **options)
            info["shap"] = f"KernelSHAP ({options.get('samples', 2048)} sampled coalitions)"
        else:
            r = A.occlusion(a)
        out = self._frame(a, r, method)
        info.update(summary(out, method))
        importance = pd.Series(np.abs(r.attributions).mean(0), index=a.names, name="mean |attribution|")
        return Explanation(out, importance, method, info)

    def _frame(self, a: A.Attributable, r: A.Result, method: str) -> pd.DataFrame:
        """One row per input row: prediction, the output attributed, then each column's attribution."""
        labels = self.schema.class_names if self.schema.task == "classification" else self.schema.targets
        t = a.targets.numpy()
        cols: dict[str, Any] = {}
        if self.schema.task == "classification":
            with torch.no_grad():
                pred = self.scores(a.inputs).argmax(1).numpy()
            cols["prediction"] = np.asarray(self.schema.classes, dtype=object)[pred]
        cols["target"] = np.asarray(labels, dtype=object)[t]
        cols["output"], cols["baseline_output"] = r.output, r.baseline_output
        meta = set(cols) | {"completeness_error", "steps"}
        for j, name in enumerate(a.names):
            cols[f"attr_{name}" if name in meta else name] = r.attributions[:, j]
        if method in ("ig", "shap"):
            cols["completeness_error"] = r.completeness_error
        if r.steps is not None:
            cols["steps"] = r.steps
        return pd.DataFrame(cols)

    def permutation(self, frame: pd.DataFrame, where: str, repeats: int = 5, seed: int = 0) -> Explanation:
        """Permutation importance (Breiman 2001): the drop in accuracy (classification) or R^2
        (regression) when one column's values are shuffled across the rows, `repeats` times."""
        y = self.pre.transform_target(frame, where).numpy()
        if len(frame) < 2:
            raise DanluError(f"{where}: permutation importance needs at least 2 rows, got {len(frame)}")
        score, metric = self._score(frame, y)
        rng = np.random.default_rng(seed)
        rows = []
        for c in self.pre.features:
            drops = []
            for _ in range(repeats):
                shuffled = frame.copy()
                shuffled[c] = frame[c].to_numpy()[rng.permutation(len(frame))]
                drops.append(score - self._score(shuffled, y)[0])
            rows.append({"feature": c, "importance": float(np.mean(drops)), "std": float(np.std(drops))})
        out = pd.DataFrame(rows)
        info = {"metric": metric, "score": score, "repeats": repeats, "rows": len(frame)}
        return Explanation(out, out.set_index("feature")["importance"], "permutation", info)

    def _score(self, frame: pd.DataFrame, y: np.ndarray) -> tuple[float, str]:
        out = self.predictor.outputs(frame)
        if self.schema.task == "classification":
            return float((out.argmax(1) == y).mean()), "accuracy"
        truth = self.pre.inverse_target(y)
        ss = ((truth - truth.mean(0)) ** 2).sum(0)
        r2 = 1 - ((truth - out) ** 2).sum(0) / np.where(ss > 0, ss, 1.0)
        return float(r2.mean()), "r2"

    def read(self, path: str | Path) -> pd.DataFrame:
        from danlu.data.tabular import read_table

        return read_table(path)

    def split(self, name: str) -> pd.DataFrame:
        return split_rows(self.frames(), name)


def summary(frame: pd.DataFrame, method: str) -> dict[str, Any]:
    """Completeness over the rows (IG, Shapley) and the steps IG used."""
    info: dict[str, Any] = {"rows": len(frame)}
    if "completeness_error" in frame:
        err = frame["completeness_error"].to_numpy()
        info["completeness_within_1pct"] = float((err <= A.TOLERANCE).mean()) if len(err) else 1.0
        info["completeness_max_error"] = float(err.max()) if len(err) else 0.0
    if "steps" in frame:
        info["steps_min"], info["steps_max"] = int(frame["steps"].min()), int(frame["steps"].max())
    return info


def explainer(run_dir: str | Path, trust_code: bool = False, loaded: Any = None) -> TabularExplainer:
    """The tabular kind's explain hook: (run folder, trust_code, its Predictor if built) -> explainer."""
    return TabularExplainer(loaded if loaded is not None else load_predictor(run_dir, trust_code))
