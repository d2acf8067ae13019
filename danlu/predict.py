"""load(run folder) -> Predictor: rebuilds model and preprocessing from the folder alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from danlu import kinds, models, tasks
from danlu.config import TaskConfig, parse_model
from danlu.data.tabular import read_table
from danlu.errors import DanluError
from danlu.run import RunDir
from danlu.training.checkpoint import load_weights


class Predictor:
    """predict / predict_proba on raw rows (DataFrame, array or list of dicts).

    The model, loss and activations model.json names must be danlu's registered ones; user
    code ("package.module:Name") there is imported only with trust_code=True."""

    def __init__(self, run: RunDir | str | Path, trust_code: bool = False) -> None:
        from danlu.registry import reading_saved

        run = run if isinstance(run, RunDir) else RunDir.open(run)
        self.run = run
        meta = run.read_model_json()
        # the kind is looked up by the name model.json gives it (user code only if trusted);
        # its preprocessor hook rebuilds the fitted preprocessing: (state, run_dir) -> it
        kind = kinds.of_run(meta, run.model_json, trust_code)
        self.kind, self.trust_code = kind, trust_code
        self.preprocessor = kind.hook("preprocessor")(meta["preprocessor"], run.path)
        self.schema = self.preprocessor.schema()
        task_cfg = TaskConfig.model_validate(meta["task"])
        model_cfg = parse_model(meta["model"])
        with reading_saved(run.model_json, trust_code):
            no_targets = torch.zeros(0, dtype=torch.long)
            self.task = tasks.build(task_cfg, self.schema, no_targets, self.preprocessor)
            self.model = models.build(model_cfg, self.schema, self.task.out_dim)
        load_weights(self.model, run.weights)
        self.model.eval()

    @property
    def classes(self) -> list[Any] | None:
        return self.schema.classes

    def frame(self, rows: Any) -> pd.DataFrame:
        if hasattr(self.preprocessor, "frame"):  # text: a list of strings is rows too
            return self.preprocessor.frame(rows)
        if isinstance(rows, pd.DataFrame):
            return rows
        if isinstance(rows, list) and rows and isinstance(rows[0], dict):
            return pd.DataFrame(rows)
        arr = np.asarray(rows)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != len(self.schema.features):
            raise DanluError(
                f"input has shape {arr.shape}; the model takes {len(self.schema.features)}"
                f" columns: {', '.join(self.schema.features)}"
            )
        return pd.DataFrame(arr, columns=self.schema.features)

    def outputs(self, rows: Any, where: str = "input", batch_size: int = 8192) -> np.ndarray:
        """Decoded outputs: class probabilities, or predictions in the target's units."""
        if hasattr(self.preprocessor, "dataset"):  # sequences: batches padded to their own length
            from danlu.data.batches import batches

            data = self.preprocessor.dataset(self.frame(rows), where, with_target=False)
            with torch.no_grad():
                outs = [self.model(**x) for x, _ in batches(data, 256, shuffle=False, seed=0).epoch(0)]
            return self.task.decode(torch.cat(outs))
        inputs = self.preprocessor.transform(self.frame(rows), where)
        n = len(next(iter(inputs.values())))
        outs = []
        with torch.no_grad():
            for i in range(0, n, batch_size):
                outs.append(self.model(**{k: v[i : i + batch_size] for k, v in inputs.items()}))
        return self.task.decode(torch.cat(outs))

    def predict(self, rows: Any) -> np.ndarray:
        out = self.outputs(rows)
        if self.schema.task == "classification":
            return np.asarray(self.schema.classes, dtype=object)[out.argmax(axis=1)]
        return out[:, 0] if out.shape[1] == 1 else out

    def predict_frame(self, path: str | Path, proba: bool = False) -> pd.DataFrame:
        """A file of rows (images: also a folder, one image or an .npy/.npz) -> its columns
        followed by the predictions (`prediction_frame`); array columns are left out."""
        pre = self.preprocessor
        rows = pre.read(path) if hasattr(pre, "read") else read_table(path)
        out = prediction_frame(self, self.outputs(rows, str(path)), proba)
        arrays = [c for c in rows.columns if len(rows) and type(rows[c].iloc[0]).__name__ == "ndarray"]
        return pd.concat([rows.drop(columns=arrays).reset_index(drop=True), out], axis=1)

    def explain(self, rows: Any, method: str = "ig", target: Any = None) -> pd.DataFrame:
        """Attributions of the rows' predictions, one row per input row and one column per
        feature (danlu/explain/; the kind's explain hook says how): method ig, shap,
        occlusion or permutation (a table per feature; the rows must hold the target)."""
        if self.kind.explain is None:
            raise DanluError(f"danlu cannot explain {self.kind.name} runs yet")
        explainer = self.kind.hook("explain")(self.run.path, self.trust_code, self)
        return explainer.explain(rows, method=method, target=target).frame

    def predict_proba(self, rows: Any) -> np.ndarray:
        if self.schema.task != "classification":
            raise DanluError("predict_proba is for classification models; this one does regression")
        return self.outputs(rows)


def prediction_frame(predictor: Predictor, out: np.ndarray, proba: bool) -> pd.DataFrame:
    """Outputs -> columns users read: `prediction` (+ `proba_<class>`), or one column per target."""
    schema = predictor.schema
    if schema.task == "classification":
        df = pd.DataFrame({"prediction": np.asarray(schema.classes, dtype=object)[out.argmax(axis=1)]})
        if proba:
            for j, name in enumerate(schema.class_names):
                df[f"proba_{name}"] = out[:, j]
        return df
    if out.shape[1] == 1:
        return pd.DataFrame({"prediction": out[:, 0]})
    return pd.DataFrame({f"prediction_{t}": out[:, j] for j, t in enumerate(schema.targets)})


def load(run_dir: str | Path, trust_code: bool = False) -> Any:
    """The run's predictor, as its kind builds it (danlu/kinds.py): a Predictor for tables,
    text, images and multimodal rows, a Recognizer for audio runs.
    trust_code: the folder may name user code (its model.json's "package.module:Name"), and
    importing it runs that code: only for folders you trust."""
    run = RunDir.open(run_dir)
    kind = kinds.of_run(run.read_model_json(), run.model_json, trust_code)
    return kind.hook("load")(run.path, trust_code)
