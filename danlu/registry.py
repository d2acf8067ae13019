"""One registry mechanism for every pluggable piece: models, losses, optimizers,
schedulers, activations and metrics.

Built-in entries are stored as "module:attribute" strings and imported on first use,
so naming a component never imports heavy libraries it does not need. User code plugs
in the same way: any name of the form "package.module:Name" is imported on demand.

A saved run folder (model.json, config.yaml) may come from anyone, and importing a module
runs it: names read from one may only be registered entries. `reading_saved` marks where
that holds; user code named there loads only when the caller trusts the folder
(`--trust-code`, `trust_code=True`). A config the user trains from is theirs: no such limit.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from danlu.errors import DanluError, choose_from


def import_object(ref: str) -> Any:
    """Import "package.module:Name" (the Name part may be dotted)."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise DanluError(f"'{ref}' is not an import reference; write it as 'package.module:Name'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise DanluError(f"cannot import module '{module_name}' for '{ref}': {e}") from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise DanluError(f"module '{module_name}' has no attribute '{attr}' (from '{ref}')") from None
    return obj


# the saved file whose names are being built, while user code named there is not trusted
_UNTRUSTED: contextvars.ContextVar[str | None] = contextvars.ContextVar("danlu_untrusted_file", default=None)


class UntrustedCodeError(DanluError):
    """User code named by a saved run folder that the caller did not trust."""


@contextlib.contextmanager
def reading_saved(file: str | Path, trust_code: bool = False) -> Iterator[None]:
    """Build from names read out of `file` (a run folder's model.json or config.yaml): inside,
    Registry.get refuses a "package.module:Name" that is not registered, unless trust_code."""
    token = _UNTRUSTED.set(None if trust_code else str(file))
    try:
        yield
    finally:
        _UNTRUSTED.reset(token)


_CODE_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def refuse_code_refs(raw: Any, file: str | Path, where: str = "") -> None:
    """Raise UntrustedCodeError for the first "package.module:Name" anywhere in a saved config
    (a dict read from `file`): checked before anything runs, where the names are only used
    later (a search's trials)."""
    if isinstance(raw, dict):
        for k, v in raw.items():
            refuse_code_refs(v, file, f"{where}.{k}" if where else str(k))
    elif isinstance(raw, list):
        for v in raw:
            refuse_code_refs(v, file, where)
    elif isinstance(raw, str) and _CODE_REF.match(raw):
        raise UntrustedCodeError(
            f"{file}: {where} '{raw}' names code, not a registered danlu name;"
            " load it only if you trust this folder: --trust-code"
        )


def distrust(file: str | Path, trust_code: bool = False) -> None:
    """reading_saved(file, trust_code) for the rest of a function run with `own_context`."""
    _UNTRUSTED.set(None if trust_code else str(file))


def own_context(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run `fn` in a copy of the caller's context: a `distrust` inside it ends with the call."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return contextvars.copy_context().run(fn, *args, **kwargs)

    return wrapper


class Registry:
    """Name -> object (or lazy "module:attr" reference)."""

    def __init__(self, kind: str, entries: dict[str, Any] | None = None, key: str = "") -> None:
        self.kind = kind
        self.key = key  # the config key that names one, for errors
        self._entries: dict[str, Any] = dict(entries or {})

    def register(self, name: str, obj: Any = None) -> Any:
        """Register `obj` under `name`; usable as a decorator when `obj` is omitted."""
        if obj is None:

            def decorator(o: Callable) -> Callable:
                self._entries[name] = o
                return o

            return decorator
        self._entries[name] = obj
        return obj

    def names(self) -> list[str]:
        return sorted(self._entries)

    def in_order(self) -> list[str]:
        """The names in the order they were registered (KINDS: the order kinds are detected in)."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def check(self, name: str) -> str:
        """Raise a DanluError listing the valid names unless `name` is usable."""
        if name in self._entries or ":" in name:
            return name
        raise choose_from(name, self.names(), self.kind)

    def get(self, name: str, key: str | None = None) -> Any:
        """The object `name` stands for; `key` names where it was read, for errors."""
        self.check(name)
        untrusted = _UNTRUSTED.get()
        if untrusted is not None and name not in self._entries:
            raise UntrustedCodeError(
                f"{untrusted}: {key or self.key} '{name}' is not a registered danlu {self.kind};"
                " load it only if you trust this folder: --trust-code"
            )
        obj = self._entries.get(name, name)
        if isinstance(obj, str):
            obj = import_object(obj)
            if name in self._entries:
                self._entries[name] = obj
        return obj


# model types: each registered with its config class by @config.model_type (one table there)
MODELS = Registry("model", key="model.type")

LOSSES = Registry(
    "loss",
    {
        "cross_entropy": "danlu.tasks.losses:cross_entropy",
        "bce_with_logits": "danlu.tasks.losses:bce_with_logits",
        "mse": "danlu.tasks.losses:mse",
        "mae": "danlu.tasks.losses:l1",
        "l1": "danlu.tasks.losses:l1",
        "huber": "danlu.tasks.losses:huber",
        "smooth_l1": "danlu.tasks.losses:smooth_l1",
    "next_token": "danlu.tasks.losses:next_token",
        "ctc": "danlu.speech.task:ctc_loss",
    },
    key="task.loss",
)

OPTIMIZERS = Registry(
    "optimizer",
    {
        "sgd": "torch.optim:SGD",
        "adam": "torch.optim:Adam",
        "adamw": "torch.optim:AdamW",
        "adagrad": "torch.optim:Adagrad",
        "rmsprop": "torch.optim:RMSprop",
    },
    key="train.optimizer",
)

SCHEDULERS = Registry(
    "scheduler",
    {
        "none": "danlu.training.schedulers:constant",
        "step": "danlu.training.schedulers:step",
        "exponential": "danlu.training.schedulers:exponential",
        "cosine": "danlu.training.schedulers:cosine",
        "warmup_cosine": "danlu.training.schedulers:warmup_cosine",
        "warmup_linear": "danlu.training.schedulers:warmup_linear",
        "onecycle": "danlu.training.schedulers:onecycle",
        "reduce_on_plateau": "danlu.training.schedulers:reduce_on_plateau",
    },
    key="train.scheduler.name",
)

ACTIVATIONS = Registry(
    "activation",
    {
        "relu": "torch.nn:ReLU",
        "tanh": "torch.nn:Tanh",
        "sigmoid": "torch.nn:Sigmoid",
        "gelu": "torch.nn:GELU",
        "silu": "torch.nn:SiLU",
        "leaky_relu": "torch.nn:LeakyReLU",
        "elu": "torch.nn:ELU",
    },
    key="model.activation",
)

# Kinds of input (danlu/kinds.py): each a Kind of hooks. Detected in this order when the config
# does not name one (data.kind): the first whose detect hook says yes; tabular always does.
KINDS = Registry(
    "kind",
    {
        "interactions": "danlu.recommend.kind:INTERACTIONS",  # data.source interactions / movielens_100k
        "multimodal": "danlu.kinds:MULTIMODAL",
        "audio": "danlu.speech.kind:AUDIO",
        "text": "danlu.kinds:TEXT",
        "sequence": "danlu.kinds:TEXT",  # a numeric-sequence run's schema names its kind so
        "corpus": "danlu.lm.kind:CORPUS",
        "image": "danlu.kinds:IMAGE",
        "tabular": "danlu.kinds:TABULAR",
    },
    key="data.kind",
)

TASKS = Registry(  # by schema.task; each called as (task config, schema, train targets, preprocessor)
    "task",
    {
        "classification": "danlu.tasks.classification:ClassificationTask",
        "regression": "danlu.tasks.regression:RegressionTask",
        "language_modeling": "danlu.lm.kind:task",
        "speech_recognition": "danlu.speech.kind:task",
        "recommendation": "danlu.recommend.kind:task",
    },
    key="task.type",
)

# Built-in metrics are computed together by danlu.evaluation.metrics and named by the
# task (Task.metric_names). This registry holds extra ones: fn(y_true, output) -> float,
# named in `eval.metrics` as "package.module:function" or registered under a short name.
METRICS = Registry("metric", key="eval.metrics")
