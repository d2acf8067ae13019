"""A toy kind of input, registered from outside danlu (the worked example of ARCHITECTURE.md,
"Adding a kind"; tests/test_kinds.py trains, predicts and evaluates it through the CLI).

Each example is a bag of numbers of any length, one JSON line `{"numbers": [...], "label": ...}`.
A config chooses it with `data.kind: toykind:BAG` (this module importable), and the model
that reads it is `model.type: toykind:BagNet`: mean-pooled per-number features (a DeepSets
model). Nothing of danlu's is edited: the kind supplies reading and preprocessing, and
reuses danlu's Predictor, final evaluation and report for rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from danlu.data.frames import Prepared
from danlu.data.tabular import SchemaMethods, TensorData, read_table
from danlu.errors import DanluError
from danlu.kinds import Kind


@dataclass
class BagSchema(SchemaMethods):
    """What the model and the task are sized from (SchemaMethods: classes, to_dict)."""

    column: str
    targets: list[str]
    classes: list[Any]
    max_len: int
    task: str = "classification"
    input_kind: str = "bag"


@dataclass
class BagPreprocessor:
    """Pads each bag to the longest training bag (longer bags are cut) and encodes the label.
    Its state goes to model.json; from_state(state, run_dir) rebuilds it for predict."""

    column: str
    target: str
    classes: list[Any]
    max_len: int

    def schema(self) -> BagSchema:
        return BagSchema(self.column, [self.target], self.classes, self.max_len)

    def state(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_state(cls, state: dict[str, Any], run_dir: Path | None = None) -> BagPreprocessor:
        return cls(**state)

    def transform(self, df: pd.DataFrame, where: str) -> dict[str, torch.Tensor]:
        if self.column not in df.columns:
            raise DanluError(f"{where}: no '{self.column}' column; columns are: {', '.join(df.columns)}")
        x = torch.zeros(len(df), self.max_len)
        mask = torch.zeros(len(df), self.max_len)
        for i, bag in enumerate(df[self.column]):
            values = [float(v) for v in list(bag)[: self.max_len]]
            x[i, : len(values)] = torch.tensor(values)
            mask[i, : len(values)] = 1.0
        return {"x": x, "mask": mask}

    def transform_target(self, df: pd.DataFrame, where: str) -> torch.Tensor | None:
        if self.target not in df.columns:
            return None
        index = {c: i for i, c in enumerate(self.classes)}
        return torch.tensor([index[v] for v in df[self.target]], dtype=torch.long)


def prepare(cfg: Any, task_type: str, seed: int, model_cfg: Any, pretrained: Any = None) -> Prepared:
    """The prepare hook: read data.path, split by data.split's fractions, fit on train."""
    df = read_table(cfg.path)
    target = cfg.target or "label"
    order = np.random.default_rng(seed).permutation(len(df))
    n_test, n_val = int(len(df) * cfg.split.test), int(len(df) * cfg.split.val)
    parts = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
    frames = {k: df.iloc[rows].reset_index(drop=True) for k, rows in parts.items() if len(rows)}
    train = frames["train"]
    classes = sorted(train[target].unique().tolist())
    pre = BagPreprocessor("numbers", target, classes, max(len(b) for b in train["numbers"]))
    splits = {
        k: TensorData(pre.transform(f, f"{k} split"), pre.transform_target(f, f"{k} split"))
        for k, f in frames.items()
    }
    return Prepared(pre.schema(), pre, splits, frames)  # type: ignore[arg-type]


class BagNet(nn.Module):
    """DeepSets: each number through a small MLP, averaged over the bag, then a linear head."""

    def __init__(self, schema: BagSchema, out_dim: int, hidden: int = 16) -> None:
        super().__init__()
        self.each = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.each(x[..., None]) * mask[..., None]
        return self.head(h.sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0))


BAG = Kind(
    "bag",
    prepare=prepare,
    preprocessor=BagPreprocessor.from_state,
    load="danlu.predict:Predictor",  # danlu's own, for rows
    finish="danlu.finish:finish_rows",
    evaluate="danlu.finish:evaluate_rows",
    describe_inputs=lambda schema: [{"name": schema.column, "type": "numbers", "max_len": schema.max_len}],
)
