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
