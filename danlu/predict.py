"""load(run folder) -> Predictor: rebuilds model and preprocessing from the folder alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from danlu import models, tasks
from danlu.config import TaskConfig, parse_model
from danlu.data.tabular import Schema, TabularPreprocessor
from danlu.errors import DanluError
from danlu.run import RunDir
from danlu.training.checkpoint import load_weights

# preprocessors by the "kind" key of their saved state; tabular when there is none. Each
# has from_state(state, run_dir), schema(), frame(rows) and dataset(frame, where, with_target)
PREPROCESSORS = {
    "text": "danlu.data.sequences:TextPreprocessor",
    "sequence": "danlu.data.sequences:SequencePreprocessor",
    "image": "danlu.data.images:ImagePreprocessor",
    "multimodal": "danlu.data.multimodal:MultimodalPreprocessor",
}


class Predictor:
    """predict / predict_proba on raw rows (DataFrame, array or list of dicts).

    The model, loss and activations model.json names must be danlu's registered ones; user
    code ("package.module:Name") there is imported only with trust_code=True."""

    def __init__(self, run: RunDir, trust_code: bool = False) -> None:
        from danlu.registry import import_object, reading_saved

        self.run = run
        meta = run.read_model_json()
        state = meta["preprocessor"]
        kind = state.get("kind", "tabular") if isinstance(state, dict) else "tabular"
        if kind in PREPROCESSORS:  # a key of this table, never a name taken from the file
            self.preprocessor = import_object(PREPROCESSORS[kind]).from_state(state, run.path)
            self.schema = self.preprocessor.schema()
        else:
            self.schema = Schema.from_dict(meta["schema"])
            self.preprocessor = TabularPreprocessor.from_state(state)
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
    """The run's predictor: a Predictor for tables and text, a Recognizer for audio runs.
    trust_code: the folder may name user code (its model.json's "package.module:Name"), and
    importing it runs that code: only for folders you trust."""
    run = RunDir.open(run_dir)
    if run.read_model_json().get("schema", {}).get("input_kind") == "audio":
        from danlu.speech.recognizer import load_recognizer

        return load_recognizer(run.path, trust_code)
    return Predictor(run, trust_code)
