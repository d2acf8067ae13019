"""Starter configs for `danlu init`: every section present and commented; for `danlu init
csv FILE`, a config made for that file from the roles of its columns."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

import yaml

from danlu.errors import DanluError, did_you_mean

if TYPE_CHECKING:
    import pandas as pd

_TRAIN_EVAL_OUTPUT = """\
model:
  type: mlp                 # mlp, or your own "package.module:Class"
  hidden: [64, 64]          # hidden layer sizes; the output size comes from the data
  activation: relu          # relu tanh sigmoid gelu silu leaky_relu elu
  dropout: 0.0
  norm: none                # none | batch | layer
  residual: false           # skip connections between equal-width layers
  init: default             # default | kaiming | xavier | orthogonal

train:
  epochs: 100
  batch_size: 32
  optimizer: adam           # sgd adam adamw adagrad rmsprop
  lr: 0.001
  weight_decay: 0.0         # decoupled for adamw; never applied to biases and norms
  l1: 0.0                   # explicit L1 penalty on weights, logged per epoch
  l2: 0.0                   # explicit L2 penalty on weights, logged per epoch
  scheduler: none           # none step exponential cosine warmup_cosine warmup_linear
                            # onecycle reduce_on_plateau
  grad_clip: null           # max gradient norm (or value with grad_clip_mode: value)
  accumulate: 1             # gradient accumulation steps
  monitor: val.loss         # any logged metric: val.accuracy, val.f1_macro, val.rmse, ...
  early_stopping: {patience: 10, min_delta: 0.0}   # or null to train every epoch
  restore_best: true        # the saved model is the best epoch's, not the last
  device: auto              # auto | cpu | cuda | mps
  precision: auto           # auto (bf16 on GPUs that have it) | fp32 | bf16 | fp16
  tensorboard: false

eval:
  split: test               # the split evaluated after training
  plots: true

output:
  dir: runs                 # runs/<name>-<YYYYmmdd-HHMMSS>/
"""

TABULAR = (
    """\
# danlu run config: `danlu train this.yaml`, override with --set key.path=value
name: wine
seed: 0

task:
  type: auto                # auto | classification | regression (auto: from the target column)
  loss: auto                # auto: cross_entropy for classes, mse for numbers

data:
  source: wine              # built-in: iris wine breast_cancer digits diabetes linnerud,
                            # make_classification make_regression make_moons make_circles make_blobs
  params: {}                # arguments of the built-in, e.g. {n_samples: 1000, random_state: 42}
  scale: standard           # standard | minmax | none (fitted on the training split only)
  split: {val: 0.1, test: 0.2, stratify: true}

"""
    + _TRAIN_EVAL_OUTPUT
)

CSV = (
    """\
# danlu run config for your own table: `danlu train this.yaml`
# (`danlu init csv FILE` writes one made for FILE, from the roles of its columns)
name: my-table
seed: 0

task:
  type: auto                # auto | classification | regression
  loss: auto                # cross_entropy bce_with_logits mse mae huber smooth_l1
  class_weights: null       # null | balanced | [w0, w1, ...]

data:
  path: data.csv            # .csv .tsv .parquet .jsonl; or train:/val:/test: files
  target: label             # the column to predict (a list for multi-output regression)
  features: null            # null: every column but the target
  categorical: null         # null: text columns; or a list of column names
  exclude: []               # columns that are not inputs: identifiers, dates, ...
  encoding: onehot          # onehot | embedding (for categorical columns)
  missing: error            # error | impute (mean or median for numbers, most frequent for categories)
  impute_numeric: mean
  scale: standard
  split: {val: 0.1, test: 0.2, stratify: true, seed: null}

"""
    + _TRAIN_EVAL_OUTPUT
)

IMAGES = (
    """\
# danlu run config for images: `danlu train this.yaml`
name: my-images
seed: 0

task:
  type: auto                # classification for class folders; from the label column otherwise

data:
  path: images/             # a folder of class sub-folders (images/cat/*.png, images/dog/*.jpg),
                            # a CSV with an image-path column (paths relative to the CSV),
                            # an .npz (arrays x and y) or .npy (+ images.labels);
                            # or source: digits_images (scikit-learn's 8x8 digits)
  target: null              # CSV: the label column
  split: {val: 0.1, test: 0.2, stratify: true}
  images:
    column: image           # CSV: the image-path column; .npz: the images array
    size: null              # model input [H, W] or an int; null: the training images' size
    resize: null            # resize to this first, then crop to size (random crop in training)
    channels: auto          # auto | 1 | 3 (auto: 1 when every image is grayscale)
    normalize: auto         # auto: per-channel mean/std of the training split | none
    augment:                # training only, on whole batches
      random_crop: null     # {padding: 4} or {scale: [0.6, 1.0], ratio: [0.75, 1.33]}
      hflip: 0.0            # probability
      rotation: 0.0         # degrees
      translate: 0.0        # fraction of width/height
      brightness: 0.0
      contrast: 0.0
      saturation: 0.0
    in_memory: auto         # auto | true | false (false: decoded from disk by DataLoader workers)
    memory_mb: 2048         # the budget for auto
    workers: 2

model:
  type: cnn                 # cnn | resnet; input channels and classes come from the data
  channels: [32, 64, 128]   # cnn: one conv block per entry, 2x2 pooling between blocks
  kernel_size: 3
  convs_per_block: 1
  pooling: max              # max | avg | none
  batch_norm: true
  activation: relu
  dropout: 0.0              # before the head (global average pooling -> linear)
  # type: resnet
  # blocks: [2, 2, 2]       # residual blocks per stage
  # widths: [32, 64, 128]   # channels per stage
  # stem: auto              # small (3x3) | large (7x7/2 + max pool); auto: large from 96 px

"""
    + _TRAIN_EVAL_OUTPUT[_TRAIN_EVAL_OUTPUT.index("train:") :]
)

TEMPLATES = {"tabular": TABULAR, "csv": CSV, "images": IMAGES}



# --------------------------------------------------------------------------- a config for a given file
SAMPLE_ROWS = 10_000  # `danlu init csv FILE` infers column roles from this many rows at most
TARGET_NAMES = ("label", "target", "class", "y", "outcome")
EXCLUDED = ("identifier", "date", "empty")  # roles that are not inputs


def csv_config(path: str, target: str | None = None) -> tuple[str, list[str]]:
    """A config for this file -> (YAML text, warnings: one line per doubtful column).

    Each column gets a role from its values (`column_role` in danlu/data/tabular.py), written
    into the config with the evidence. Numeric and categorical columns are the tabular
    inputs; identifiers, dates and empty columns go to data.exclude (a date is not expanded:
    add year/month/weekday columns to the file to use one); free text is read by a text
    encoder, so a file with text columns gets a multimodal config (data.inputs, model fusion)."""
    from danlu.data.tabular import column_role, infer_task, read_table  # pandas and torch: not for plain init

    df = read_table(path, nrows=SAMPLE_ROWS)
    target, how = _target(df, path, target)
    roles = {c: column_role(df[c], c) for c in df.columns if c != target}
    text = [c for c, (role, _) in roles.items() if role == "text"]
    tabular = [c for c, (role, _) in roles.items() if role in ("numeric", "categorical")]
    if not tabular and not text:
        raise DanluError(
            f"{path}: no column to learn '{target}' from: "
            + "; ".join(f"'{c}' is {role} ({why})" for c, (role, why) in roles.items())
        )
    warnings = [
        f"warning: {path}: column '{c}' looks like "
        + (f"an identifier ({why}); excluded" if role == "identifier" else f"free text ({why}); read as text")
        for c, (role, why) in roles.items()
        if role in ("identifier", "text")
    ]
    rows = f"its {len(df):,} rows" if len(df) < SAMPLE_ROWS else f"its first {len(df):,} rows"
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", path.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0])
    gaps = [c for c in tabular if df[c].isna().any()]
    head = [
        f"# danlu run config for {path}, written by `danlu init csv`: `danlu train this.yaml`",
        f"# The column roles were inferred from {rows}: check them (data section).",
        f"name: {_yaml(stem.strip('-_') or 'my-table')}",
        "seed: 0",
        "",
        "task:",
        _line("type: auto", f"auto: {infer_task(df[target])}, from the target; classification | regression"),
        _line("loss: auto", "cross_entropy bce_with_logits mse mae huber smooth_l1"),
        _line("class_weights: null", "null | balanced | [w0, w1, ...]"),
        "",
        "data:",
        _line(f"path: {_yaml(path)}", "relative paths are read from where you run danlu"),
        _line(f"target: {_yaml(target)}", how),
        f"  # column roles, from {rows}:",
        *_roles_table(roles),
        _line(
            f"missing: {'impute' if gaps else 'error'}",
            f"gaps in {', '.join(gaps)}: filled (mean of numbers, most frequent category)"
            if gaps
            else "error | impute (mean or median for numbers, most frequent for categories)",
        ),
        "  split: {val: 0.1, test: 0.2, stratify: true, seed: null}",
    ]
    categorical = [c for c in tabular if roles[c][0] == "categorical"]
    excluded = [c for c, (role, _) in roles.items() if role in EXCLUDED]
    body = _multimodal(df, tabular, categorical, text) if text else _tabular(categorical, excluded)
    return "\n".join(head + body) + "\n", warnings


def _target(df: pd.DataFrame, path: str, target: str | None) -> tuple[str, str]:
    """The target column and how it was chosen: --target, a usual name, or the last column."""
    columns = list(df.columns)
    if len(columns) < 2:
        raise DanluError(f"{path}: one column ({columns[0]}); a config needs a target and at least one input")
    if target is not None:
        if target not in columns:
            raise DanluError(
                f"--target: column '{target}' is not in {path}{did_you_mean(target, columns)};"
                f" columns are: {', '.join(columns)}"
            )
        return target, "given with --target"
    named = [c for c in columns if c.strip().lower() in TARGET_NAMES]
    if named:
        return named[0], "guessed from its name: change it here (or use --target)"
    return columns[-1], "guessed: the last column; change it here (or use --target)"


def _roles_table(roles: dict[str, tuple[str, str]]) -> list[str]:
    width = max(len(c) for c in roles)
    rows = []
    for c, (role, why) in roles.items():
        note = ": excluded" if role in EXCLUDED else ""
        rows.append(f"  #   {c.replace(chr(10), ' '):<{width}}  {role:<11}  {why}{note}")
    return rows


def _tabular(categorical: list[str], excluded: list[str]) -> list[str]:
    return [
        _line("features: null", "null: every column but the target and data.exclude"),
        _line(f"categorical: {_yaml(categorical)}", "encoded by data.encoding; the other inputs are numbers"),
        _line(f"exclude: {_yaml(excluded)}", "not inputs: identifiers (a value per row) and dates"),
        "                            # (to use a date, add its year/month/weekday as columns of the file)",
        _line("encoding: onehot", "onehot | embedding (for categorical columns)"),
        "  impute_numeric: mean",
        "  scale: standard",
        "",
        _TRAIN_EVAL_OUTPUT,
    ]


def _multimodal(df: pd.DataFrame, tabular: list[str], categorical: list[str], text: list[str]) -> list[str]:
    """One text input per free-text column and one tabular input for the numeric and
    categorical columns, each read by its own encoder (danlu/data/multimodal.py,
    danlu/models/fusion.py). Columns no input names are not read: no data.exclude here."""
    import numpy as np

    taken: set[str] = set()
    inputs, encoders, allow_missing = [], [], []
    if tabular:
        name = _input_name("table", taken)
        spec = f"{{kind: tabular, columns: {_yaml(tabular)}, categorical: {_yaml(categorical)}}}"
        inputs.append(f"    {name}: {spec}")
        encoders.append(f"    {name}: {{type: mlp, hidden: [32]}}")
    for c in text:
        name = _input_name(c, taken)
        # the word tokenizer's pieces (words and runs of punctuation): room for most rows, plus
        # the special tokens
        pieces = df[c].dropna().astype(str).str.count(r"\w+|[^\w\s]+")
        max_length = int(min(512, max(16, 8 * math.ceil((1.2 * float(np.percentile(pieces, 95)) + 2) / 8))))
        spec = f"{{kind: text, column: {_yaml(c)}, tokenizer: word, max_length: {max_length}}}"
        inputs.append(f"    {name}: {spec}")
        transformer = "{type: transformer, d_model: 32, layers: 1, heads: 2, ff: 64, pooling: mean}"
        encoders.append(f"    {name}: {transformer}")
        if df[c].isna().any() or (df[c].astype(str).str.strip() == "").any():
            allow_missing.append(name)
    return [
        _line("inputs:", "name -> kind (tabular | text | image) and its columns; text: a word"),
        "                            # vocabulary fitted on the training split, rows cut at max_length",
        *inputs,
        _line(
            f"allow_missing: {_yaml(allow_missing) if allow_missing else 'false'}",
            "inputs that may be empty in a row (a learned stand-in takes their place)",
        ),
        "",
        "model:",
        _line("type: fusion", "one encoder per input, fused into one head"),
        _line("fusion: concat", "concat | gated | attention"),
        _line("dim: 32", "each encoder's output features"),
        _line("hidden: [32]", "the head over the fused features"),
        "  dropout: 0.1",
        _line("encoders:", "one per input, the same names as data.inputs; text: transformer"),
        "                            # | rnn | pretrained_encoder; tabular: mlp",
        *encoders,
        "",
        _TRAIN_EVAL_OUTPUT[_TRAIN_EVAL_OUTPUT.index("train:") :],
    ]


def _input_name(column: str, taken: set[str]) -> str:
    """An input name (letters, digits, _) from a column name, unique among `taken`."""
    name = re.sub(r"\W+", "_", column, flags=re.ASCII).strip("_") or "text"
    name = f"c_{name}" if name[0].isdigit() else name
    base, k = name, 2
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def _yaml(value: object) -> str:
    """A YAML scalar or flow list, quoted where needed."""
    return yaml.safe_dump([value], default_flow_style=True, width=10**6, allow_unicode=True).strip()[1:-1]


def _line(key_value: str, comment: str, indent: int = 2) -> str:
    """A config line with its comment in the column the templates above use."""
    text = " " * indent + key_value
    return f"{text:<28}# {comment}" if len(text) < 28 else f"{text}  # {comment}"
