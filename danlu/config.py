"""RunConfig: the whole run in one validated object.

A YAML file (or a dict from Python) becomes a RunConfig. Every error names its key
path, the bad value and what would be valid. `--set key.path=value` overrides are
applied to the raw mapping before validation, so they are type-checked like the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from danlu.errors import DanluError, did_you_mean
from danlu.registry import ACTIVATIONS, LOSSES, MODELS, OPTIMIZERS, SCHEDULERS


def _registered(registry: Any, name: str) -> str:
    # a ValueError (not DanluError) so pydantic attaches the key path
    try:
        return registry.check(name)
    except DanluError as e:
        raise ValueError(str(e)) from None


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- task
class TaskConfig(Section):
    """What is predicted and how it is scored. Loss `auto` picks from the data."""

    type: Literal["auto", "classification", "regression", "language_modeling"] = "auto"
    loss: str = "auto"
    class_weights: list[float] | Literal["balanced"] | None = None
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    pos_weight: float | Literal["balanced"] | None = None
    huber_delta: float = Field(1.0, gt=0.0)

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, v: str) -> str:
        return v if v == "auto" else _registered(LOSSES, v)


# --------------------------------------------------------------------------- data
class SplitConfig(Section):
    """Fractions of one file; `test` is split off first, then `val` from the rest."""

    val: float = Field(0.1, ge=0.0, lt=1.0)
    test: float = Field(0.2, ge=0.0, lt=1.0)
    stratify: bool = True
    seed: int | None = None  # defaults to the run's seed

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        if self.val + self.test >= 1.0:
            raise ValueError(f"val ({self.val}) + test ({self.test}) must leave rows for training")
        return self


class DataConfig(Section):
    """Tabular data: a built-in dataset, one file split by fractions, or one file per split."""

    source: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    path: str | None = None
    train: str | None = None
    val: str | None = None
    test: str | None = None
    format: Literal["auto", "csv", "tsv", "parquet", "jsonl"] = "auto"
    features: list[str] | None = None
    target: str | list[str] | None = None
    categorical: list[str] | None = None
    encoding: Literal["onehot", "embedding"] = "onehot"
    missing: Literal["error", "impute"] = "error"
    impute_numeric: Literal["mean", "median"] = "mean"
    scale: Literal["standard", "minmax", "none"] = "standard"
    scale_target: bool = True
    split: SplitConfig = Field(default_factory=SplitConfig)
    # text for language modeling: a .txt file or folder of them, or JSONL with text_field
    text_field: str = "text"
    tokenizer: str = "char"  # char | bpe (byte-level, trained on the training text) | tokenizer.json path
    vocab_size: int = Field(8000, ge=16)  # for bpe
    stride: int | None = Field(None, ge=1)  # a training window every `stride` tokens (default: block)

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        given = [k for k in ("source", "path", "train") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of data.source (a built-in dataset), data.path (one file)"
                f" or data.train (+ data.val/data.test files); got {given or 'none'}"
            )
        if (self.val or self.test) and not self.train:
            raise ValueError("data.val/data.test files need data.train as well")
        return self


# --------------------------------------------------------------------------- model
class MLPConfig(Section):
    type: Literal["mlp"] = "mlp"
    hidden: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [64, 64])
    activation: str = "relu"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    norm: Literal["none", "batch", "layer"] = "none"
    residual: bool = False
    init: Literal["default", "kaiming", "xavier", "orthogonal"] = "default"
    embedding_dim: int | None = None  # per categorical column when data.encoding=embedding

    @field_validator("activation")
    @classmethod
    def _known_activation(cls, v: str) -> str:
        return _registered(ACTIVATIONS, v)


class CustomModelConfig(Section):
    """A user model: `type: "package.module:Class"`; `params` go to its constructor."""

    type: str
    params: dict[str, Any] = Field(default_factory=dict)


class GPTModelConfig(Section):
    """A decoder-only Transformer (danlu/models/gpt.py); vocab size comes from the tokenizer."""

    type: Literal["gpt"] = "gpt"
    n_layer: int = Field(4, ge=1)
    n_head: int = Field(4, ge=1)
    n_embd: int = Field(128, ge=1)
    block_size: int = Field(64, ge=2)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    bias: bool = True  # GPT-2 has biases; keeps the export loadable by transformers
    tie_embeddings: bool = True

    @model_validator(mode="after")
    def _heads_divide(self) -> GPTModelConfig:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        return self


MODEL_CONFIGS: dict[str, type[Section]] = {"mlp": MLPConfig, "gpt": GPTModelConfig}


def _model_tag(v: Any) -> str | None:
    t = v.get("type", "mlp") if isinstance(v, dict) else getattr(v, "type", None)
    if not isinstance(t, str):
        return None
    if t in MODEL_CONFIGS:
        return t
    return "custom" if ":" in t else None


ModelConfig = Annotated[
    Annotated[MLPConfig, Tag("mlp")]
    | Annotated[GPTModelConfig, Tag("gpt")]
    | Annotated[CustomModelConfig, Tag("custom")],
    Discriminator(
        _model_tag,
        custom_error_type="unknown_model",
        custom_error_message="unknown model type",
    ),
]


def parse_model(d: dict[str, Any]) -> MLPConfig | GPTModelConfig | CustomModelConfig:
    """A saved `model` section (model.json) -> its config object."""
    return TypeAdapter(ModelConfig).validate_python(d)


# --------------------------------------------------------------------------- train
class SchedulerConfig(Section):
    name: str = "none"
    warmup: float = Field(0.0, ge=0.0)  # < 1: fraction of all steps; >= 1: steps
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)
    step_size: int = Field(10, gt=0)  # epochs, for `step`
    gamma: float = Field(0.1, gt=0.0)  # for `step` and `exponential`
    factor: float = Field(0.1, gt=0.0, lt=1.0)  # for `reduce_on_plateau`
    patience: int = Field(5, ge=0)  # for `reduce_on_plateau`

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        return _registered(SCHEDULERS, v)


class EarlyStoppingConfig(Section):
    patience: int = Field(10, ge=1)
    min_delta: float = Field(0.0, ge=0.0)


class TrainConfig(Section):
    epochs: int = Field(100, ge=1)
    max_steps: int | None = Field(None, ge=1)  # stop after this many optimizer steps
    eval_every: int | None = Field(None, ge=1)  # evaluate/checkpoint every N steps, not per epoch
    batch_size: int = Field(32, ge=1)
    optimizer: str = "adam"
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)  # sgd, rmsprop
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    l1: float = Field(0.0, ge=0.0)  # explicit penalty on weights, added to the loss
    l2: float = Field(0.0, ge=0.0)  # explicit penalty on weights, added to the loss
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    grad_clip: float | None = Field(None, gt=0.0)
    grad_clip_mode: Literal["norm", "value"] = "norm"
    accumulate: int = Field(1, ge=1)
    monitor: str = "val.loss"
    early_stopping: EarlyStoppingConfig | None = Field(default_factory=EarlyStoppingConfig)
    restore_best: bool = True
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    tensorboard: bool = False

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, v: str) -> str:
        return _registered(OPTIMIZERS, v)

    @field_validator("scheduler", mode="before")
    @classmethod
    def _scheduler_shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("early_stopping", mode="before")
    @classmethod
    def _early_stopping_shorthand(cls, v: Any) -> Any:
        if v is False:
            return None
        return {} if v is True else v

    @field_validator("monitor")
    @classmethod
    def _monitor_split(cls, v: str) -> str:
        if not v.startswith(("val.", "train.")):
            raise ValueError(f"'{v}' must name a split and a metric, e.g. val.loss or val.accuracy")
        return v


# --------------------------------------------------------------------------- eval, output
class EvalConfig(Section):
    split: Literal["test", "val", "train"] = "test"
    metrics: list[str] = Field(default_factory=list)  # extra metric functions, "pkg.mod:fn"
    plots: bool = True


class OutputConfig(Section):
    dir: str = "runs"
    timestamp: bool = True  # runs/<name>-<YYYYmmdd-HHMMSS>; false: runs/<name>


class RunConfig(Section):
    name: str = "run"
    seed: int = 0
    task: TaskConfig = Field(default_factory=TaskConfig)
    data: DataConfig
    model: ModelConfig = Field(default_factory=MLPConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @field_validator("model", mode="before")
    @classmethod
    def _model_type_known(cls, v: Any) -> Any:
        if isinstance(v, dict) and isinstance(v.get("type"), str):
            _registered(MODELS, v["type"])
        return v

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


# --------------------------------------------------------------------------- loading
def load(
    source: str | Path | dict[str, Any] | RunConfig,
    overrides: list[str] | dict[str, Any] | None = None,
) -> RunConfig:
    """YAML path, mapping or RunConfig + overrides -> validated RunConfig."""
    where = "config"
    if isinstance(source, RunConfig):
        raw = source.to_dict()
    elif isinstance(source, dict):
        raw = dict(source)
    else:
        where = str(source)
        raw = read_yaml(source)
    for key, value in _parse_overrides(overrides).items():
        set_path(raw, key, value, where)
    return validate(raw, where)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DanluError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DanluError(f"{path}: cannot read config file: {e}") from e
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise DanluError(f"{path}: YAML syntax error{at}: {problem}") from e
    if raw is None:
        raise DanluError(f"{path}: config file is empty")
    if not isinstance(raw, dict):
        raise DanluError(f"{path}: a config must be a mapping of sections, got {type(raw).__name__}")
    return raw


def validate(raw: dict[str, Any], where: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise DanluError(f"{where}: {_describe(e.errors()[0], raw)}") from None
    except DanluError as e:  # raised by registry checks inside validators
        raise DanluError(f"{where}: {e}") from None


def _parse_overrides(overrides: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    if not overrides:
        return {}
    if isinstance(overrides, dict):
        return overrides
    parsed: dict[str, Any] = {}
    for item in overrides:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise DanluError(f"--set '{item}': write it as key.path=value, e.g. train.lr=0.01")
        # YAML parsing gives numbers, booleans, lists and null their types
        try:
            parsed[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            parsed[key.strip()] = value
    return parsed


def set_path(raw: dict[str, Any], key: str, value: Any, where: str = "config") -> None:
    """Set raw[a][b][c] = value for key "a.b.c"; the key must exist in the schema."""
    parts = key.split(".")
    schema: type[BaseModel] | None = RunConfig
    node = raw
    for i, part in enumerate(parts):
        fields = _fields_of(schema)
        if fields is not None and part not in fields:
            prefix = ".".join(parts[:i])
            at = f" in '{prefix}'" if prefix else ""
            raise DanluError(
                f"{where}: --set {key}: no key '{part}'{at}{did_you_mean(part, fields)};"
                f" valid: {', '.join(sorted(fields))}"
            )
        if i == len(parts) - 1:
            node[part] = value
            return
        child = node.get(part)
        if not isinstance(child, dict):
            child = {} if child is None else _as_mapping(child)
            node[part] = child
        schema = _child_schema(schema, part, child)
        node = child


def _as_mapping(value: Any) -> dict[str, Any]:
    # shorthand values (`scheduler: cosine`) expand so a nested key can be set
    return {"name": value} if isinstance(value, str) else {}


def _fields_of(schema: type[BaseModel] | None) -> set[str] | None:
    if schema is None:
        return None  # free-form mapping (e.g. data.params)
    return set(schema.model_fields)


def _child_schema(schema: type[BaseModel] | None, part: str, child: dict[str, Any]) -> type[BaseModel] | None:
    if schema is None:
        return None
    if schema is RunConfig and part == "model":
        tag = _model_tag(child) or "mlp"
        return MODEL_CONFIGS.get(tag, CustomModelConfig)
    ann = schema.model_fields[part].annotation
    for candidate in (ann, *getattr(ann, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _describe(err: dict[str, Any], raw: dict[str, Any]) -> str:
    """One pydantic error -> 'key.path: problem (what is valid)'."""
    loc = [str(p) for p in err["loc"] if p not in ("mlp", "gpt", "custom")]
    path = ".".join(loc) or "(top level)"
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        parent = loc[:-1]
        fields = _valid_fields(parent, raw)
        hint = did_you_mean(loc[-1], fields) if fields else ""
        valid = f"; valid keys here: {', '.join(sorted(fields))}" if fields else ""
        return f"unknown key '{path}'{hint}{valid}"
    if kind == "missing":
        return f"missing required key '{path}'"
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        choices = [c.strip().strip("'") for c in expected.replace(" or ", ", ").split(",")]
        return f"{path}: '{value}' is not valid{did_you_mean(str(value), choices)}; choose from {expected}"
    if kind == "unknown_model":
        t = value.get("type") if isinstance(value, dict) else value
        names = MODELS.names()
        return (
            f"model.type: unknown model '{t}'{did_you_mean(str(t), names)};"
            f" valid: {', '.join(names)} or 'package.module:Class'"
        )
    msg = err["msg"].removeprefix("Value error, ")
    if isinstance(value, dict | list) or value is None or repr(value) in msg or f"'{value}'" in msg:
        return f"{path}: {msg}"
    return f"{path}: {msg} (got {value!r})"


def _valid_fields(parent: list[str], raw: dict[str, Any]) -> set[str]:
    schema: type[BaseModel] | None = RunConfig
    node: Any = raw
    for part in parent:
        if not isinstance(node, dict):
            return set()
        node = node.get(part, {})
        schema = _child_schema(schema, part, node if isinstance(node, dict) else {})
    return set(schema.model_fields) if schema else set()


def template(kind: str = "tabular") -> str:
    """A starter config with every section commented (for `danlu init`)."""
    from danlu.templates import TEMPLATES  # small module of YAML text

    if kind not in TEMPLATES:
        raise DanluError(
            f"unknown template '{kind}'{did_you_mean(kind, TEMPLATES)}; valid: {', '.join(sorted(TEMPLATES))}"
        )
    return TEMPLATES[kind]
