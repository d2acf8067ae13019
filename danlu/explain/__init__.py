"""`danlu explain`: why a model predicts what it does, with attributions that are checked.

Each kind of input says how its runs are explained through its `explain` hook
(danlu/kinds.py): `(run_dir, trust_code, loaded) -> explainer`, where `loaded` is the
run's predictor when the caller has it already (`danlu.load(run).explain(...)`). An
explainer has `methods` (the names `--method` takes) and `explain(rows, method, target,
where) -> Explanation`. The methods themselves work on one flat input space
(attribution.py); tabular.py maps a table's columns into it and back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from danlu.errors import DanluError

ALL_METHODS = ("ig", "shap", "occlusion", "permutation")


@dataclass
class Explanation:
    frame: (
        pd.DataFrame
    )  # per row: prediction, target, outputs, one column per feature (permutation: per feature)
    importance: pd.Series  # per feature: mean |attribution| (permutation: the score's drop)
    method: str
    info: dict[str, Any] = field(default_factory=dict)  # baseline, completeness, steps, ...
    html: str | None = None  # text: the sentences coloured per token


def captum_attr() -> Any:
    """captum.attr, or a one-line error saying how to install it."""
    try:
        import captum.attr
    except ImportError:
        raise DanluError(
            "danlu explain needs Captum: pip install 'danlu[explain]' (or: pip install captum)"
        ) from None
    return captum.attr


def check_method(method: str, methods: tuple[str, ...], kind: str) -> None:
    if method not in methods:
        what = "an unknown method" if method not in ALL_METHODS else f"not supported for {kind} runs"
        raise DanluError(f"--method {method}: {what}; {kind} runs support: {', '.join(methods)}")


def target_index(schema: Any, target: Any, predicted: Any) -> Any:
    """The output attributed for each row: --target's class (regression: its target column),
    else `predicted` (each row's predicted class; regression: the first target)."""
    import torch

    n = len(predicted)
    if schema.task == "classification":
        names = schema.class_names
        if target is None:
            return predicted
        if str(target) not in names:
            raise DanluError(
                f"--target '{target}' is not a class of this model; its classes: {', '.join(names)}"
            )
        return torch.full((n,), names.index(str(target)), dtype=torch.long)
    if target is None:
        return torch.zeros(n, dtype=torch.long)
    if str(target) not in schema.targets:
        raise DanluError(
            f"--target '{target}' is not a target of this regression model; its targets:"
            f" {', '.join(schema.targets)}"
        )
    return torch.full((n,), schema.targets.index(str(target)), dtype=torch.long)


def run_frames(run: Any, task: str) -> dict[str, pd.DataFrame]:
    """The run's splits as raw rows, re-read and re-split as in training."""
    from danlu import config as config_mod
    from danlu import data as data_mod

    cfg = config_mod.load(run.config)
    try:
        return data_mod.build(cfg.data, task, cfg.seed, cfg.model).frames
    except DanluError as e:
        raise DanluError(
            f"explain needs the run's data (its splits, and the training rows' mean): {e}"
        ) from None


def split_rows(frames: dict[str, pd.DataFrame], name: str) -> pd.DataFrame:
    if name not in frames:
        raise DanluError(f"--split {name}: this run has no '{name}' split; it has: {', '.join(frames)}")
    return frames[name]


def load_predictor(run_dir: str | Path, trust_code: bool) -> Any:
    """The run's predictor, as its kind's load hook builds it (what the explainers wrap)."""
    from danlu import kinds
    from danlu.run import RunDir

    run = RunDir.open(run_dir)
    return kinds.of_run(run.read_model_json(), run.model_json, trust_code).hook("load")(run.path, trust_code)


def explainer(run_dir: str | Path, trust_code: bool = False, loaded: Any = None) -> Any:
    """The run's explainer, as its kind builds it (the kind's explain hook)."""
    from danlu import kinds
    from danlu.run import RunDir

    run = RunDir.open(run_dir)
    kind = kinds.of_run(run.read_model_json(), run.model_json, trust_code)
    if kind.explain is None:
        raise DanluError(
            f"{run.path}: danlu cannot explain {kind.name} runs (its kind has no explain hook);"
            f" kinds that can: {', '.join(explainable_kinds())}"
        )
    return kind.hook("explain")(run.path, trust_code, loaded)


def explainable_kinds() -> list[str]:
    """The registered kinds with an explain hook."""
    from danlu import kinds
    from danlu.registry import KINDS

    return [name for name in KINDS.names() if kinds.get(name).explain is not None]
