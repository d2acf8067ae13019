"""Starter configs for `danlu init`: every section present and commented."""

from __future__ import annotations

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
  encoding: onehot          # onehot | embedding (for categorical columns)
  missing: error            # error | impute (mean or median for numbers, most frequent for categories)
  impute_numeric: mean
  scale: standard
  split: {val: 0.1, test: 0.2, stratify: true, seed: null}

"""
    + _TRAIN_EVAL_OUTPUT
)

TEMPLATES = {"tabular": TABULAR, "csv": CSV}
