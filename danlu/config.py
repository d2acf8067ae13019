"""RunConfig: the whole run in one validated object.

A YAML file (or a dict from Python) becomes a RunConfig. Every error names its key
path, the bad value and what would be valid. `--set key.path=value` overrides are
applied to the raw mapping before validation, so they are type-checked like the file.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Annotated, Any, Literal, Union

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
from danlu.registry import ACTIVATIONS, KINDS, LOSSES, MODELS, OPTIMIZERS, SCHEDULERS


def _registered(registry: Any, name: str) -> str:
    # a ValueError (not DanluError) so pydantic attaches the key path
    try:
        return registry.check(name)
    except DanluError as e:
        raise ValueError(str(e)) from None


# numpy's generators and the data splitter take 32-bit seeds; a larger or negative one failed
# deep in the split ("cannot make a stratified test split") or overflowed in torch
SEED_MAX = 2**32 - 1


def _seed_range(v: int | None) -> int | None:
    if v is not None and not 0 <= v <= SEED_MAX:
        raise ValueError(f"must be an integer from 0 to {SEED_MAX} (2**32 - 1), got {v}")
    return v


class Section(BaseModel):
    # no float setting means anything as inf or nan (`lr: .inf` trained into NaN weights)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# --------------------------------------------------------------------------- task
class DecoderConfig(Section):
    """How a speech_recognition run turns frame probabilities into text (danlu/speech/decode.py):
    `greedy` (best path) or `beam` (CTC prefix beam search); `lexicon: train` keeps the beam
    to words seen in the training transcripts (saved with the model)."""

    type: Literal["greedy", "beam"] = "greedy"
    beam_size: int = Field(16, ge=1)
    lexicon: Literal["train"] | None = None

    @model_validator(mode="after")
    def _lexicon_needs_beam(self) -> DecoderConfig:
        if self.lexicon is not None and self.type != "beam":
            raise ValueError("lexicon decoding is a beam search; set type: beam")
        return self


class TaskConfig(Section):
    """What is predicted and how it is scored. Loss `auto` picks from the data."""

    type: Literal[
        "auto", "classification", "regression", "language_modeling", "speech_recognition", "recommendation"
    ] = "auto"
    loss: str = "auto"
    class_weights: list[float] | Literal["balanced"] | None = None
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    pos_weight: float | Literal["balanced"] | None = None
    huber_delta: float = Field(1.0, gt=0.0)
    # language modeling: a sample of this many tokens is generated at each evaluation (0: none)
    sample_tokens: int = Field(200, ge=0)
    sample_prompt: str = "\n"
    sample_temperature: float = Field(0.8, ge=0.0)
    # speech recognition: greedy or (lexicon) beam search decoding
    decoder: DecoderConfig = Field(default_factory=DecoderConfig)

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
    # recommendation (danlu/recommend/data.py): random over interactions, a ratio of each user's,
    # each user's last by time (leave_last_out), one global time cut (temporal), or the
    # dataset's own files (predefined: ua, ub, u1..u5 of MovieLens 100K)
    method: Literal["random", "per_user", "leave_last_out", "temporal", "predefined"] = "random"
    predefined: str | None = None

    _seed = field_validator("seed")(_seed_range)

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        if self.val + self.test >= 1.0:
            raise ValueError(f"val ({self.val}) + test ({self.test}) must leave rows for training")
        return self


class TextInputConfig(Section):
    """A text column for classification/regression (danlu/data/sequences.py): tokenized by a
    tokenizer fitted on the training split, or the pretrained encoder's own (`auto`)."""

    column: str = "text"
    tokenizer: str = "auto"  # auto | char | word | wordpiece | bpe | path to a tokenizer.json
    vocab_size: int = Field(20000, ge=3)  # at most, for the fitted tokenizers
    min_frequency: int = Field(1, ge=1)  # tokens seen fewer times in training are unknown
    lowercase: bool = True
    max_length: int = Field(128, ge=2)  # tokens per row, special tokens included
    truncation: bool = True  # false: a longer row is an error naming it
    padding: Literal["longest", "max_length"] = "longest"  # pad each batch to its longest row, or always


class SequenceInputConfig(Section):
    """Numeric sequences (time series): a column holding a list per row (numbers, or lists of
    numbers for several features), or an .npy/.npz array N x T x F as data.path."""

    column: str = "sequence"  # the list column of a CSV/JSONL (for .npy/.npz data: its name)
    targets: str | None = None  # .npy data: the file of targets (N or N x k); .npz: the array's key
    max_length: int = Field(512, ge=1)
    truncation: bool = True
    scale: bool = True  # standardize each feature with training-split statistics


class SpecAugmentConfig(Section):
    """Masks on the training features (Park et al. 2019): widths are maxima, drawn per mask."""

    time_masks: int = Field(2, ge=0)
    time_width: int = Field(20, ge=1)  # frames
    freq_masks: int = Field(2, ge=0)
    freq_width: int = Field(10, ge=1)  # mel bins


class LabelFromNameConfig(Section):
    """The label or transcript from the file name: the first group of `pattern` (searched in
    the name), translated through `map` when given (e.g. '7' -> 'seven')."""

    pattern: str
    map: dict[str, str] = Field(default_factory=dict)


class AudioDataConfig(Section):
    """Audio inputs (speech recognition, or classification of clips): where transcripts come
    from, how splits are made, the log-mel features and train-only augmentation."""

    sample_rate: int = Field(16000, ge=1000)
    n_mels: int = Field(80, ge=1)
    win_ms: float = Field(25.0, gt=0.0)
    hop_ms: float = Field(10.0, gt=0.0)
    normalize: Literal["utterance", "global", "none"] = "utterance"
    specaugment: SpecAugmentConfig | None = None
    speed_perturb: list[Annotated[float, Field(gt=0.0)]] = Field(default_factory=list)  # e.g. [0.9, 1.0, 1.1]
    noise_snr_db: float | None = None  # white noise at this SNR on training audio
    audio_column: str = "audio"  # manifests: path relative to the manifest
    text_column: str = "text"  # manifests: the transcript (speech_recognition)
    speaker_column: str = "speaker"
    label_from_name: LabelFromNameConfig | None = None  # transcript/label from the file name
    split_by: Literal["random", "speaker"] = "random"  # speaker: test/val speakers are unseen
    speaker_pattern: str | None = None  # regex group in the file name, or "fsdd" (digit_speaker_index)
    test_pattern: str | None = None  # files whose name matches go to test (before fractions)
    val_pattern: str | None = None
    vocab: str = "auto"  # auto: the characters of the training transcripts; or the characters
    lowercase: bool = True
    unknown_chars: Literal["error", "drop", "map"] = "error"  # characters outside the vocabulary
    char_map: dict[str, str] = Field(default_factory=dict)  # for unknown_chars: map

    @field_validator("speaker_pattern", "test_pattern", "val_pattern")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        import re

        if v is not None and v != "fsdd":
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"'{v}' is not a regular expression: {e}") from None
        return v


class RandomCropConfig(Section):
    """Random crops for training: `padding` pads each side (zeros) and crops back to size, like
    CIFAR training; `scale`/`ratio` crop a random area fraction and aspect ratio, then resize."""

    padding: int = Field(0, ge=0)
    scale: tuple[float, float] = (1.0, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    @model_validator(mode="after")
    def _ranges(self) -> RandomCropConfig:
        lo, hi = self.scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"scale {list(self.scale)} must satisfy 0 < low <= high <= 1")
        if not 0.0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio {list(self.ratio)} must satisfy 0 < low <= high")
        return self


class ImageAugmentConfig(Section):
    """Training-only augmentation, applied to whole batches as tensors (danlu/data/transforms.py)."""

    random_crop: RandomCropConfig | None = None
    hflip: float = Field(0.0, ge=0.0, le=1.0)  # probability of a horizontal flip
    rotation: float = Field(0.0, ge=0.0, le=180.0)  # degrees, drawn in [-rotation, rotation]
    translate: float = Field(0.0, ge=0.0, lt=1.0)  # fraction of width/height, drawn per axis
    brightness: float = Field(0.0, ge=0.0, lt=1.0)  # factor drawn in [1 - b, 1 + b]
    contrast: float = Field(0.0, ge=0.0, lt=1.0)
    saturation: float = Field(0.0, ge=0.0, lt=1.0)

    @field_validator("random_crop", mode="before")
    @classmethod
    def _crop_shorthand(cls, v: Any) -> Any:
        if v is True:
            return {}
        return None if v is False else v


class ImageDataConfig(Section):
    """Images (danlu/data/images.py): a folder of class sub-folders, a CSV with an image-path
    column, an .npy/.npz array, or `source: digits_images`. Decoded with Pillow."""

    column: str = "image"  # CSV: the column of image paths (relative to the CSV); .npz: the array's key
    labels: str | None = None  # .npy images: a .npy (or one label per line .txt) file of labels
    size: int | tuple[int, int] | None = None  # model input [H, W]; default: the training images' size
    resize: int | tuple[int, int] | None = None  # resize to this first, then crop to `size`
    channels: Literal["auto", 1, 3] = "auto"  # auto: 1 if every image is grayscale, else 3
    augment: ImageAugmentConfig = Field(default_factory=ImageAugmentConfig)
    normalize: Literal["auto", "none"] = "auto"  # auto: per-channel mean/std of the training split
    in_memory: Literal["auto"] | bool = "auto"  # auto: decode once when the set fits in memory_mb
    memory_mb: int = Field(2048, ge=1)
    workers: int = Field(2, ge=0)  # DataLoader processes decoding from disk


class TabularInputConfig(Section):
    """Numeric and categorical columns of a multimodal row (data.inputs); unset options
    follow data.encoding / data.missing / data.impute_numeric / data.scale."""

    kind: Literal["tabular"] = "tabular"
    columns: list[str] = Field(min_length=1)
    categorical: list[str] | None = None  # default: the columns that do not look numeric
    encoding: Literal["onehot", "embedding"] | None = None
    missing: Literal["error", "impute"] | None = None  # impute: cells filled; missing only if all are
    impute_numeric: Literal["mean", "median"] | None = None
    scale: Literal["standard", "minmax", "none"] | None = None


class TextFieldConfig(TextInputConfig):
    """A text column of a multimodal row (data.inputs), tokenized like data.text."""

    kind: Literal["text"] = "text"


class ImageFieldConfig(ImageDataConfig):
    """An image-path column of a multimodal row (data.inputs), decoded like data.images."""

    kind: Literal["image"] = "image"


class InteractionColumnsConfig(Section):
    """Recommendation: the columns of an interactions table (rating and timestamp optional)."""

    user: str = "user"
    item: str = "item"
    rating: str | None = None
    timestamp: str | None = None


class ImplicitConfig(Section):
    """Recommendation: which interactions are positives for ranking (None: all of them)."""

    min_rating: float | None = None


# data.source values read by danlu/recommend (the interactions kind) from data.path
RECOMMEND_SOURCES = ("interactions", "movielens_100k")

InputConfig = Annotated[
    TabularInputConfig | TextFieldConfig | ImageFieldConfig, Field(discriminator="kind")
]


class DataConfig(Section):
    """Tabular data: a built-in dataset, one file split by fractions, or one file per split."""

    # the kind of input (danlu/kinds.py): auto detects it; or a registered name, or user code
    # "package.module:KIND" (a danlu.kinds.Kind), like model.type
    kind: str = "auto"
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
    exclude: list[str] = Field(default_factory=list)  # columns that are not inputs (ids, dates, ...)
    encoding: Literal["onehot", "embedding"] = "onehot"
    missing: Literal["error", "impute"] = "error"
    impute_numeric: Literal["mean", "median"] = "mean"
    scale: Literal["standard", "minmax", "none"] = "standard"
    scale_target: bool = True
    split: SplitConfig = Field(default_factory=SplitConfig)
    # text for language modeling: a .txt file or folder of them, or JSONL with text_field
    text_field: str = "text"
    # JSONL rows with these two fields are prompt/completion pairs: the loss is on completions
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    tokenizer: str = "char"  # char | bpe (byte-level, trained on the training text) | tokenizer.json path
    vocab_size: int = Field(8000, ge=16)  # for bpe
    stride: int | None = Field(None, ge=1)  # a training window every `stride` tokens (default: block)
    # prompt/completion or chat rows packed several to a window (model.type causal_lm)
    packing: bool = False
    audio: AudioDataConfig | None = None  # audio inputs: manifest or folder of recordings
    # text or numeric sequences for classification/regression (danlu/data/sequences.py)
    text: TextInputConfig | None = None
    sequence: SequenceInputConfig | None = None
    images: ImageDataConfig | None = None  # image inputs (danlu/data/images.py)
    # several named inputs of one row, each with its kind, for model.type fusion (danlu/data/multimodal.py)
    inputs: dict[str, InputConfig] | None = None
    allow_missing: bool | list[str] = False  # inputs that may be empty in a row (true: all)
    # recommendation (source: interactions or movielens_100k; danlu/recommend/data.py)
    columns: InteractionColumnsConfig | None = None
    implicit: ImplicitConfig | None = None
    duplicates: Literal["last", "mean", "error"] = "last"  # (user, item) twice: keep the last, mean, refuse

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        return v if v == "auto" else _registered(KINDS, v)

    @model_validator(mode="after")
    def _inputs(self) -> DataConfig:
        if self.inputs is None:
            if self.allow_missing:
                raise ValueError("allow_missing names inputs of data.inputs; there are none")
            return self
        import re

        if not self.inputs:
            raise ValueError("data.inputs is empty; name at least one input")
        # with inputs, a column no input names is simply not read: nothing to exclude
        others = [
            k for k in ("text", "sequence", "images", "audio", "features", "exclude") if getattr(self, k)
        ]
        if others:
            raise ValueError(f"data.inputs replaces data.{others[0]}; declare every input under data.inputs")
        for name in self.inputs:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"input name '{name}' must be letters, digits and _ (no dots or spaces)")
        if isinstance(self.allow_missing, list):
            for name in self.allow_missing:
                if name not in self.inputs:
                    raise ValueError(
                        f"allow_missing: '{name}' is not an input{did_you_mean(name, self.inputs)};"
                        f" inputs are: {', '.join(self.inputs)}"
                    )
        return self

    @model_validator(mode="before")
    @classmethod
    def _public_dataset_source(cls, v: Any) -> Any:
        # data.source NAME of a public dataset (danlu/datasets.py) stands for its usual files
        from danlu import datasets

        name = v.get("source") if isinstance(v, dict) else None
        if not isinstance(name, str) or name not in datasets.DATASETS:
            return v
        if name in RECOMMEND_SOURCES:  # its reader needs the name; data.path defaults to its folder
            return v if v.get("path") else {**v, "path": f"{datasets.SCHEME}{name}"}
        given = [k for k in ("path", "train", "val", "test") if v.get(k)]
        if given:
            raise ValueError(
                f"source: {name} already names the dataset's files; drop data.{given[0]}, or drop"
                f" data.source and write data.{given[0]}: {datasets.SCHEME}{name}/FILE"
            )
        files = {
            k: f"{datasets.SCHEME}{name}/{rel}".rstrip("/")
            for k, rel in datasets.DATASETS[name].default.items()
        }
        return {**v, "source": None, **files}

    @field_validator("path", "train", "val", "test")
    @classmethod
    def _public_dataset_path(cls, v: str | None) -> str | None:
        # dataset://NAME/file: a file of a public dataset in the data directory, downloaded
        # on first use (danlu/datasets.py); the run's config keeps the resolved path
        if v is None or not v.startswith("dataset://"):
            return v
        from danlu import datasets

        try:
            return str(datasets.resolve(v))
        except DanluError as e:
            raise ValueError(str(e)) from None

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if self.source in RECOMMEND_SOURCES:
            if not self.path or self.train:
                raise ValueError(
                    f"source: {self.source} reads data.path (a file; movielens_100k: its folder); set"
                    " data.path and no data.train"
                )
            return self
        rec = [k for k in ("columns", "implicit") if getattr(self, k) is not None]
        rec += ["split.method"] if self.split.method != "random" or self.split.predefined else []
        if rec:
            raise ValueError(
                f"data.{rec[0]} is for recommendation data: set data.source to one of"
                f" {', '.join(RECOMMEND_SOURCES)}"
            )
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
# One table of model types: `@model_type(name, builder)` on a config class registers both the
# class (in the `model` union below) and the nn.Module builder (registry.MODELS, imported on
# first use); encoder=True also lets it encode one input of a fusion model. A new model type
# is one decorated class.
MODEL_CONFIGS: dict[str, type[Section]] = {}
ENCODER_CONFIGS: dict[str, type[Section]] = {}  # what can encode one input of a fusion model


def model_type(name: str, builder: str, encoder: bool = False) -> Any:
    def register(cls: type[Section]) -> type[Section]:
        MODEL_CONFIGS[name] = cls
        if encoder:
            ENCODER_CONFIGS[name] = cls
        MODELS.register(name, builder)
        return cls

    return register


@model_type("mlp", "danlu.models.mlp:MLP", encoder=True)
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


class LoraConfig(Section):
    """Low-rank adapters (peft) on the named Linear layers; the rest of the model is frozen."""

    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0.0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["c_attn", "c_proj", "c_fc"])


# the architecture of a checkpoint named by `from`; the config may not contradict it
GPT_ARCHITECTURE = ("n_layer", "n_head", "n_embd", "bias", "tie_embeddings", "activation")


@model_type("gpt", "danlu.lm.build:gpt")
class GPTModelConfig(Section):
    """A decoder-only Transformer (danlu/lm/model.py); vocab size comes from the tokenizer.

    `from` names a checkpoint to fine-tune (a danlu run, a GPT-2 folder or a hub id): its
    architecture and tokenizer are used, `block_size` may shorten its context, and `lora`
    trains adapters instead of every weight."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True,
                              serialize_by_alias=True)

    type: Literal["gpt"] = "gpt"
    from_: str | None = Field(None, alias="from")
    n_layer: int = Field(4, ge=1)
    n_head: int = Field(4, ge=1)
    n_embd: int = Field(128, ge=1)
    block_size: int = Field(64, ge=2)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    bias: bool = True  # GPT-2 has biases; keeps the export loadable by transformers
    tie_embeddings: bool = True
    # exact GELU (nanoGPT's, and cheaper on CPU); GPT-2 checkpoints bring gelu_tanh
    activation: Literal["gelu", "gelu_tanh"] = "gelu"
    lora: LoraConfig | None = None

    @model_validator(mode="after")
    def _heads_divide(self) -> GPTModelConfig:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.lora is not None and not self.from_:
            raise ValueError("lora adapts a pretrained model: set model.from to the checkpoint to adapt")
        return self


class CausalLoraConfig(LoraConfig):
    """LoRA on danlu's Llama (danlu/lm/llama.py): its Linear layers are qkv (q_proj, k_proj,
    v_proj fused), o, gate_up (gate_proj, up_proj fused), down and lm_head, in every family."""

    target_modules: list[str] = Field(default_factory=lambda: ["qkv", "o"])


@model_type("causal_lm", "danlu.lm.finetune:causal_lm")
class CausalLMConfig(Section):
    """Fine-tuning a Llama-family checkpoint (Llama, SmolLM, Qwen2, Mistral, Phi-3, Gemma:
    a Hugging Face folder, a GGUF file, a hub id) on danlu's Llama (danlu/lm/finetune.py):
    every weight, or `lora` adapters. `block_size`: the training window (default: the
    longest example, at most min(context, 2048))."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True,
                              serialize_by_alias=True)

    type: Literal["causal_lm"] = "causal_lm"
    from_: str = Field(alias="from")
    block_size: int | None = Field(None, ge=2)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    lora: CausalLoraConfig | None = None
    gradient_checkpointing: bool = False  # recompute each block in the backward pass: less memory


@model_type("rnn", "danlu.models.rnn:RNNEncoder", encoder=True)
class RNNConfig(Section):
    """A recurrent encoder for text or numeric sequences (danlu/models/rnn.py)."""

    type: Literal["rnn"] = "rnn"
    cell: Literal["rnn", "lstm", "gru"] = "lstm"
    embedding_dim: int = Field(128, ge=1)  # text: token embedding size
    hidden: int = Field(128, ge=1)
    layers: int = Field(1, ge=1)
    bidirectional: bool = False
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    pooling: Literal["last", "mean", "max", "attention"] = "last"


@model_type("transformer", "danlu.models.transformer:TransformerEncoder", encoder=True)
class TransformerConfig(Section):
    """A Transformer encoder for text or numeric sequences (danlu/models/transformer.py)."""

    type: Literal["transformer"] = "transformer"
    d_model: int = Field(128, ge=1)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    ff: int = Field(512, ge=1)  # feed-forward width
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    positions: Literal["learned", "sinusoidal"] = "learned"
    pre_norm: bool = True
    pooling: Literal["cls", "mean"] = "cls"

    @model_validator(mode="after")
    def _heads_divide(self) -> TransformerConfig:
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        return self


class EncoderLoraConfig(LoraConfig):
    """LoRA for a pretrained encoder: BERT-style attention projections by default."""

    target_modules: list[str] = Field(default_factory=lambda: ["query", "value"])


@model_type("pretrained_encoder", "danlu.models.pretrained:PretrainedEncoder", encoder=True)
class PretrainedEncoderConfig(Section):
    """A Hugging Face encoder (BERT family) fine-tuned with a task head (danlu/models/pretrained.py).

    path: a model folder, a hub id, or pkg://package/folder inside an installed package."""

    type: Literal["pretrained_encoder"] = "pretrained_encoder"
    path: str
    pooling: Literal["cls", "mean"] = "cls"
    strategy: Literal["full", "head_only", "freeze", "lora"] = "full"
    freeze_layers: int = Field(0, ge=0)  # strategy freeze: the embeddings and the first k layers
    layer_decay: float | None = Field(None, gt=0.0, le=1.0)  # lr x decay^(layers above)
    head_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    lora: EncoderLoraConfig | None = None

    @model_validator(mode="after")
    def _strategy(self) -> PretrainedEncoderConfig:
        if self.strategy == "lora" and self.lora is None:
            self.__dict__["lora"] = EncoderLoraConfig()
        if self.lora is not None and self.strategy != "lora":
            raise ValueError(f"lora is set but strategy is '{self.strategy}'; set strategy: lora")
        if self.freeze_layers and self.strategy != "freeze":
            raise ValueError(f"freeze_layers needs strategy: freeze (got '{self.strategy}')")
        return self


@model_type("ctc", "danlu.speech.model:CTCModel")
class CTCModelConfig(Section):
    """Speech recognizer (danlu/speech/model.py): conv subsampling of log-mel frames, an encoder,
    and a linear CTC head over the characters of the training transcripts (blank = 0)."""

    type: Literal["ctc"] = "ctc"
    encoder: Literal["gru", "lstm", "transformer", "conformer"] = "gru"
    subsample: Literal[1, 2, 4, 8] = 4  # time reduction of the conv front end
    channels: int = Field(32, ge=1)  # conv subsampling channels
    hidden: int = Field(256, ge=1)
    layers: int = Field(3, ge=1)
    heads: int = Field(4, ge=1)  # transformer/conformer
    conv_kernel: int = Field(15, ge=1)  # conformer convolution module
    dropout: float = Field(0.1, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _heads_divide(self) -> CTCModelConfig:
        if self.encoder in ("transformer", "conformer") and self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        return self


@model_type("audio_cnn", "danlu.speech.model:AudioCNN")
class AudioCNNConfig(Section):
    """Audio clip classifier (keyword spotting): conv blocks over log-mel frames, pooled over time."""

    type: Literal["audio_cnn"] = "audio_cnn"
    channels: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [32, 64, 128])
    dropout: float = Field(0.1, ge=0.0, lt=1.0)


@model_type("wav2vec2_ctc", "danlu.speech.model:Wav2Vec2CTC")
class Wav2Vec2CTCConfig(Section):
    """Fine-tune a Hugging Face Wav2Vec2-style CTC checkpoint with a new character vocabulary."""

    type: Literal["wav2vec2_ctc"] = "wav2vec2_ctc"
    path: str  # a transformers folder (config.json + weights)
    freeze_feature_encoder: bool = True


# recommendation models (danlu/recommend/models.py); popularity and ease are fitted in closed
# form when built, so they have no trainable parameters and the trainer takes no steps
@model_type("popularity", "danlu.recommend.models:Popularity")
class PopularityConfig(Section):
    type: Literal["popularity"] = "popularity"


@model_type("ease", "danlu.recommend.models:EASE")
class EASEConfig(Section):
    """Steck's EASE: item-item weights B = closed form of ||X - XB||² + lambda ||B||², diag 0."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True,
                              serialize_by_alias=True, allow_inf_nan=False)

    type: Literal["ease"] = "ease"
    lambda_: float = Field(500.0, gt=0.0, alias="lambda")


@model_type("mf", "danlu.recommend.models:MF")
class MFConfig(Section):
    """Biased matrix factorisation of ratings: mean + user bias + item bias + p_u . q_i."""

    type: Literal["mf"] = "mf"
    factors: int = Field(64, ge=1)
    reg: float = Field(0.1, ge=0.0)  # L2 on the factors a batch uses, per rating
    bias_reg: float = Field(0.01, ge=0.0)  # L2 on the biases a batch uses, per rating
    init_std: float = Field(0.1, gt=0.0)


@model_type("bpr", "danlu.recommend.models:BPR")
class BPRConfig(Section):
    """Pairwise ranking (BPR) over user and item factors with an item bias, sampled negatives."""

    type: Literal["bpr"] = "bpr"
    factors: int = Field(64, ge=1)
    reg: float = Field(1e-4, ge=0.0)  # L2 on the factors a batch uses
    negatives: int = Field(1, ge=1)  # sampled per positive, fixed by (seed, epoch)
    init_std: float = Field(0.1, gt=0.0)


@model_type("dae", "danlu.recommend.models:DAE")
class DAEConfig(Section):
    """Mult-DAE: a user's history (dropout on the input) -> tanh hidden layer -> a score per item,
    trained with the softmax cross-entropy of the user's items over all items."""

    type: Literal["dae"] = "dae"
    hidden: int = Field(600, ge=1)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)  # of the input history, in training


@model_type("cnn", "danlu.models.cnn:CNN", encoder=True)
class CNNConfig(Section):
    """A plain convolutional network (danlu/models/cnn.py): one block per `channels` entry
    (convolutions, batch norm, activation, pooling), then global average pooling and a head.
    Input channels and classes come from the data."""

    type: Literal["cnn"] = "cnn"
    channels: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [32, 64, 128])
    kernel_size: int = Field(3, ge=1)
    convs_per_block: int = Field(1, ge=1)
    pooling: Literal["max", "avg", "none"] = "max"  # 2x2, after every block but the last
    batch_norm: bool = True
    activation: str = "relu"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # before the head

    @field_validator("activation")
    @classmethod
    def _known_activation(cls, v: str) -> str:
        return _registered(ACTIVATIONS, v)


@model_type("resnet", "danlu.models.cnn:ResNet", encoder=True)
class ResNetConfig(Section):
    """A small residual network (danlu/models/cnn.py): a stem, then stages of basic blocks
    (`blocks[i]` blocks of width `widths[i]`, stride 2 from the second stage on)."""

    type: Literal["resnet"] = "resnet"
    blocks: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [2, 2, 2])
    widths: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [32, 64, 128])
    stem: Literal["auto", "small", "large"] = "auto"  # small: 3x3 conv; large: 7x7/2 + max pool
    activation: str = "relu"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # before the head

    @field_validator("activation")
    @classmethod
    def _known_activation(cls, v: str) -> str:
        return _registered(ACTIVATIONS, v)

    @model_validator(mode="after")
    def _stages(self) -> ResNetConfig:
        if len(self.blocks) != len(self.widths):
            raise ValueError(
                f"blocks ({len(self.blocks)} stages) and widths ({len(self.widths)}) must have one"
                " entry per stage"
            )
        return self


def _type_tag(v: Any, known: dict[str, Any]) -> str | None:
    """The union member a model section belongs to: its `type` when known, "custom" for
    "package.module:Class"."""
    t = v.get("type", "mlp") if isinstance(v, dict) else getattr(v, "type", None)
    if not isinstance(t, str):
        return None
    if t in known:
        return t
    return "custom" if ":" in t else None


def _encoder_tag(v: Any) -> str | None:
    return _type_tag(v, ENCODER_CONFIGS)


def _union(table: dict[str, type[Section]]) -> Any:
    """The tagged union of a table's config classes, and CustomModelConfig ("custom") for
    user code "package.module:Class"."""
    members = [Annotated[cls, Tag(name)] for name, cls in table.items()]
    return Union[tuple([*members, Annotated[CustomModelConfig, Tag("custom")]])]  # noqa: UP007


EncoderConfig = Annotated[
    _union(ENCODER_CONFIGS),
    Discriminator(
        _encoder_tag,
        custom_error_type="unknown_encoder",
        custom_error_message="unknown encoder type",
    ),
]


@model_type("fusion", "danlu.models.fusion:FusionModel")
class FusionConfig(Section):
    """Several inputs (data.inputs), one encoder each, fused into one task head
    (danlu/models/fusion.py). Each encoder's own output layer projects its input to `dim`
    features; `fusion` combines them: concat (in the order of `encoders`), gated
    (per-input sigmoid gates, summed) or attention (a Transformer layer over one token per
    input, pooled by a learned query)."""

    type: Literal["fusion"] = "fusion"
    encoders: dict[str, EncoderConfig]
    fusion: Literal["concat", "gated", "attention"] = "concat"
    dim: int = Field(64, ge=1)  # features per input
    heads: int = Field(4, ge=1)  # attention fusion
    hidden: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [64])  # the head
    activation: str = "relu"
    dropout: float = Field(0.1, ge=0.0, lt=1.0)

    @field_validator("activation")
    @classmethod
    def _known_activation(cls, v: str) -> str:
        return _registered(ACTIVATIONS, v)

    @model_validator(mode="after")
    def _heads_divide(self) -> FusionConfig:
        if not self.encoders:
            raise ValueError("encoders is empty; give one encoder per input of data.inputs")
        if self.fusion == "attention" and self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        return self


def _model_tag(v: Any) -> str | None:
    return _type_tag(v, MODEL_CONFIGS)


ModelConfig = Annotated[
    _union(MODEL_CONFIGS),
    Discriminator(
        _model_tag,
        custom_error_type="unknown_model",
        custom_error_message="unknown model type",
    ),
]


def parse_model(d: dict[str, Any]) -> Any:
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
    # a training-loss point (steps.csv, and a line without a terminal) every N steps; by
    # default a twentieth of a max_steps run or a tenth of eval_every, none for epoch runs
    log_every: int | None = Field(None, ge=1)
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
    checkpoint_every: float = Field(30.0, ge=0.0)  # seconds between `last` checkpoints (0: every eval)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # torch.compile the training step's model: pays on GPUs after a warm-up of about a
    # minute; on CPU small models gain little (measured in BENCHMARKS.md)
    compile: bool = False
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
# speech scoring's text normaliser (danlu/speech/normalize.py): danlu's steps or Whisper's
NORMALIZER_STEPS = ("lower", "punct", "numbers")
WHISPER_ENGLISH = "whisper_english"


def normalizer_spec(spec: str) -> tuple[str, ...]:
    """The steps a normaliser spec names: 'none' -> (), 'lower,punct' -> steps, 'whisper_english'
    (or 'whisper-en') -> ('whisper_english',); anything else is a DanluError naming what is valid."""
    name = spec.strip().lower()
    if name in (WHISPER_ENGLISH, "whisper-en", "whisper_en"):
        return (WHISPER_ENGLISH,)
    parts = [p.strip() for p in name.split(",") if p.strip()]
    if parts in ([], ["none"]):
        return ()
    for p in parts:
        if p not in NORMALIZER_STEPS:
            raise DanluError(
                f"normalizer '{spec}': '{p}' is not one; use none, whisper_english (whisper-en) "
                f"or a comma list of {', '.join(NORMALIZER_STEPS)}"
            )
    return tuple(p for p in NORMALIZER_STEPS if p in parts)


class EvalConfig(Section):
    split: Literal["test", "val", "train"] = "test"
    metrics: list[str] = Field(default_factory=list)  # extra metric functions, "pkg.mod:fn"
    plots: bool = True
    # speech recognition: text normaliser before WER/CER (None: transcripts as decoded)
    normalizer: str | None = None
    # recommendation: cut-offs of the ranking metrics; full ranking of every item, or each test
    # positive against `negatives` sampled items (as NCF/SASRec papers report, labelled so);
    # the user's training items left out of the ranking unless exclude_seen is false
    k: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [10], min_length=1)
    protocol: Literal["full", "sampled"] = "full"
    negatives: int = Field(100, ge=1)
    exclude_seen: bool = True

    @field_validator("normalizer")
    @classmethod
    def _known_normalizer(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                normalizer_spec(v)
            except DanluError as e:
                raise ValueError(str(e)) from None
        return v


class OutputConfig(Section):
    dir: str = "runs"
    timestamp: bool = True  # runs/<name>-<YYYYmmdd-HHMMSS>; false: runs/<name>


class TuneConfig(Section):
    """Hyperparameter search for `danlu tune` (danlu/tuning.py); `danlu train` ignores it.
    `space` maps config keys to ranges: {log_float: [1e-4, 1e-1]}, {choice: [...]}, a list."""

    metric: str | None = None  # default: train.monitor
    direction: Literal["auto", "minimize", "maximize"] = "auto"  # auto: loss/error minimize
    sampler: Literal["grid", "random", "tpe", "cmaes"] = "tpe"
    pruner: Literal["none", "median", "hyperband", "successive_halving"] = "median"
    trials: int | None = Field(None, ge=1)  # default: every grid point for grid, else 20
    timeout: float | None = Field(None, gt=0)  # seconds, or "90s", "30m", "2h"
    seed: int | None = None  # the sampler's seed (default: the run's seed)
    startup_trials: int = Field(5, ge=0)  # random trials before TPE models, and before pruning
    warmup: int = Field(0, ge=0)  # evaluations of a trial before the pruner may stop it
    # every process running a trial records it alive this often (seconds); a trial not heard of
    # for grace_period seconds, or whose process on this machine is gone, is failed and run again
    heartbeat: float = Field(10, gt=0)
    grace_period: float = Field(60, gt=0)
    space: dict[str, Any] = Field(default_factory=dict)

    _seed = field_validator("seed")(_seed_range)

    @field_validator("timeout", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        import re

        if not isinstance(v, str):
            return v
        m = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", v)
        if not v.strip() or not m or not any(m.groups()):
            raise ValueError(f"'{v}' is not a duration: write seconds or e.g. 90s, 30m, 2h, 1h30m")
        h, mins, s = (float(g or 0) for g in m.groups())
        return h * 3600 + mins * 60 + s

    @field_validator("metric")
    @classmethod
    def _metric_split(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("val.", "train.")):
            raise ValueError(f"'{v}' must name a split and a metric, e.g. val.loss or val.accuracy")
        return v

    @model_validator(mode="after")
    def _grace_above_heartbeat(self) -> TuneConfig:
        if self.grace_period <= self.heartbeat:
            raise ValueError(
                f"grace_period ({self.grace_period}) must be longer than heartbeat ({self.heartbeat}),"
                " or a live trial would be failed between two heartbeats"
            )
        return self


RUN_NAME = r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}"  # one path component: never '..', '/x' or ''


def check_run_name(value: Any, key: str = "name") -> str:
    """A run name becomes a folder under output.dir: one path component of safe characters."""
    import re

    if not isinstance(value, str) or not re.fullmatch(RUN_NAME, value):
        raise DanluError(
            f"{key}: {value!r} is not a valid run name: use 1 to 100 letters, digits, '-', '_' or '.',"
            " not starting with '.' (it names a folder under output.dir)"
        )
    return value


class RunConfig(Section):
    name: str = "run"
    seed: int = 0
    task: TaskConfig = Field(default_factory=TaskConfig)
    data: DataConfig
    model: ModelConfig = Field(default_factory=MLPConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    tune: TuneConfig | None = None  # for `danlu tune`; training ignores it

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        try:
            return check_run_name(v)
        except DanluError as e:  # a ValueError, so pydantic attaches the key path
            raise ValueError(str(e).removeprefix("name: ")) from None
    _seed = field_validator("seed")(_seed_range)

    @field_validator("model", mode="before")
    @classmethod
    def _model_type_known(cls, v: Any) -> Any:
        if isinstance(v, str):  # `model: mlp` was reported as "unknown model 'mlp' (did you mean 'mlp'?)"
            raise ValueError(f"expected a mapping like {{type: {v}, ...}}, got the string '{v}'")
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


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that rejects a key given twice in one mapping: plain YAML keeps the
    last value silently, and a second `train:` section is almost always a mistake."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader's own error says so
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' (first given at line {first}); keep one",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def yaml_load(text: str) -> Any:
    """yaml.safe_load, but a key given twice in a mapping is an error."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise DanluError(f"{path}: config file not found")
    if path.is_dir():
        run_config = path / "config.yaml"
        hint = f"; a run folder? its config is {run_config}" if run_config.is_file() else ""
        raise DanluError(f"{path}: is a directory, not a config file{hint}")
    if not path.is_file() and not stat.S_ISFIFO(path.stat().st_mode):  # a pipe, as from <(...), is read
        raise DanluError(f"{path}: is {_file_kind(path)}, not a config file; give a YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DanluError(f"{path}: cannot read config file: {e}") from e
    try:
        raw = yaml_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        what = "YAML error" if isinstance(e, yaml.constructor.ConstructorError) else "YAML syntax error"
        raise DanluError(f"{path}: {what}{at}: {problem}") from e
    if raw is None:
        raise DanluError(f"{path}: config file is empty")
    if not isinstance(raw, dict):
        raise DanluError(f"{path}: a config must be a mapping of sections, got {type(raw).__name__}")
    return raw


def _file_kind(path: Path) -> str:
    mode = path.stat().st_mode
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


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
            parsed[key.strip()] = yaml_load(value) if value.strip() else ""
        except yaml.constructor.ConstructorError as e:  # a duplicate key in a {...} value
            raise DanluError(f"--set '{item}': {e.problem}") from None
        except yaml.YAMLError:
            parsed[key.strip()] = value
    return parsed


def set_path(raw: dict[str, Any], key: str, value: Any, where: str = "config", label: str = "--set") -> None:
    """Set raw[a][b][c] = value for key "a.b.c"; the key must exist in the schema.
    `label` names where the key came from in errors (--set, tune.space)."""
    parts = key.split(".")
    schema: type[BaseModel] | None = RunConfig
    node = raw
    for i, part in enumerate(parts):
        fields = _fields_of(schema)
        if fields is not None and part not in fields:
            prefix = ".".join(parts[:i])
            at = f" in '{prefix}'" if prefix else ""
            raise DanluError(
                f"{where}: {label} {key}: no key '{part}'{at}{did_you_mean(part, fields)};"
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
    return {f.alias or name for name, f in schema.model_fields.items()}


def _child_schema(schema: type[BaseModel] | None, part: str, child: dict[str, Any]) -> type[BaseModel] | None:
    if schema is None:
        return None
    if schema is RunConfig and part == "model":
        tag = _model_tag(child) or "mlp"
        return MODEL_CONFIGS.get(tag, CustomModelConfig)
    ann = next(f for n, f in schema.model_fields.items() if (f.alias or n) == part).annotation
    for candidate in (ann, *getattr(ann, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _describe(err: dict[str, Any], raw: dict[str, Any]) -> str:
    """One pydantic error -> 'key.path: problem (what is valid)'."""
    loc = [str(p) for p in err["loc"] if p not in ("custom", *MODEL_CONFIGS)]
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
    if kind in ("union_tag_invalid", "union_tag_not_found"):  # e.g. data.inputs.<name>.kind
        ctx = err.get("ctx", {})
        key, tag = ctx.get("discriminator", "'kind'").strip("'"), ctx.get("tag")
        got = f"'{tag}' is not valid" if tag is not None else "is missing"
        return f"{path}.{key}: {got}; choose from {ctx.get('expected_tags', 'tabular, text, image')}"
    if kind == "unknown_encoder":
        t = value.get("type") if isinstance(value, dict) else value
        return (
            f"{path}.type: '{t}' cannot encode an input{did_you_mean(str(t), ENCODER_CONFIGS)};"
            f" valid: {', '.join(ENCODER_CONFIGS)} or 'package.module:Class'"
        )
    if kind == "finite_number":
        return f"{path}: must be a finite {_number_rule(loc, raw)}, got {value}"
    if kind == "greater_than" and err.get("ctx", {}).get("gt") == 0:
        return f"{path}: must be a positive number, got {value}"
    msg = err["msg"].removeprefix("Value error, ")
    if isinstance(value, dict | list) or value is None or repr(value) in msg or f"'{value}'" in msg:
        return f"{path}: {msg}"
    return f"{path}: {msg} (got {value!r})"


def _number_rule(loc: list[str], raw: dict[str, Any]) -> str:
    """'positive number', 'number >= 0', ... from the bounds of the field at loc."""
    schema: type[BaseModel] | None = RunConfig
    node: Any = raw
    try:
        for part in loc[:-1]:
            node = node.get(part, {}) if isinstance(node, dict) else {}
            schema = _child_schema(schema, part, node if isinstance(node, dict) else {})
    except StopIteration:  # a union member's name in the location: no bounds to tell
        return "number"
    fields = schema.model_fields if schema else {}
    info = next((f for n, f in fields.items() if (f.alias or n) == loc[-1]), None)
    bounds = []
    for m in info.metadata if info else []:
        for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            if getattr(m, attr, None) is not None:
                bounds.append((sign, getattr(m, attr)))
    if bounds == [(">", 0)] or bounds == [(">", 0.0)]:
        return "positive number"
    return "number" + "".join(f" {sign} {v}" for sign, v in bounds)


def _valid_fields(parent: list[str], raw: dict[str, Any]) -> set[str]:
    schema: type[BaseModel] | None = RunConfig
    node: Any = raw
    for part in parent:
        if not isinstance(node, dict):
            return set()
        node = node.get(part, {})
        schema = _child_schema(schema, part, node if isinstance(node, dict) else {})
    return {f.alias or n for n, f in schema.model_fields.items()} if schema else set()


def template(kind: str = "tabular") -> str:
    """A starter config with every section commented (for `danlu init`)."""
    from danlu.templates import TEMPLATES  # small module of YAML text

    if kind not in TEMPLATES:
        raise DanluError(
            f"unknown template '{kind}'{did_you_mean(kind, TEMPLATES)}; valid: {', '.join(sorted(TEMPLATES))}"
        )
    return TEMPLATES[kind]
