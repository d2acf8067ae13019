"""Text and numeric sequences for classification and regression.

`data.text` names a text column of a CSV/TSV/JSONL file; a tokenizer (character, word,
WordPiece or byte-level BPE, trained with Hugging Face `tokenizers` on the training split
only; a given tokenizer.json; or a pretrained encoder's own) turns each row into token ids,
saved as tokenizer.json in the run folder. `data.sequence` names a column holding a list of
numbers per row (or lists of numbers: several features per step), or the data is an .npy /
.npz array N x T x F; features are standardized with training-split statistics.

Splits are `SequenceData`: rows padded once to the longest row, and batches cut from them
grouped by length (rows of similar length together) so each batch is padded only to its
own longest row.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from danlu.data.batches import epoch_order, length_buckets
from danlu.data.tabular import SchemaMethods, TabularPreprocessor, _row_numbers
from danlu.errors import DanluError, did_you_mean

PAD, UNK = "[PAD]", "[UNK]"
SPECIALS = [PAD, UNK]
TOKENIZERS = ("char", "word", "wordpiece", "bpe")
BUCKET = 50  # batches' worth of rows sorted by length together when shuffling


# --------------------------------------------------------------------------- schema
@dataclass
class SequenceSchema(SchemaMethods):
    """What a sequence model is sized from."""

    task: str  # classification | regression
    targets: list[str]
    classes: list[Any] | None
    input_kind: str  # text | sequence
    column: str
    max_length: int
    vocab_size: int = 0  # text
    pad_id: int = 0  # text
    n_features: int = 0  # numeric sequences: values per step
    tokenizer: str = ""
    pretrained: dict[str, Any] | None = None  # pretrained_encoder: {"base": ref, "config": {...}}

    @property
    def features(self) -> list[str]:
        return [self.column]



# --------------------------------------------------------------------------- split data
class SequenceData:
    """One split: `values` (N x L, or N x L x F) padded to the longest row, true lengths,
    and targets. Batches are sliced to their own longest row."""

    def __init__(
        self, key: str, values: torch.Tensor, lengths: torch.Tensor, y: torch.Tensor | None, fixed: int = 0
    ) -> None:
        self.key, self.values, self.lengths, self.y, self.fixed = key, values, lengths, y, fixed

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def inputs(self) -> dict[str, torch.Tensor]:
        return {self.key: self.values, "attention_mask": _mask(self.lengths, self.values.shape[1])}

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        world: int = 1,
        device: torch.device | str = "cpu",
    ) -> SequenceBatches:
        return SequenceBatches(self, batch_size, shuffle, seed, rank, world, device)


def _mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    return (torch.arange(width, device=lengths.device) < lengths[:, None]).long()


class SequenceBatches:
    """Batches of one epoch in an order fixed by (seed, epoch). Shuffled: rows are permuted,
    sorted by length within chunks of BUCKET batches, and the batches shuffled, so padding
    is small while every epoch still differs. Not shuffled: file order (for evaluation)."""

    def __init__(
        self,
        data: SequenceData,
        batch_size: int,
        shuffle: bool,
        seed: int,
        rank: int,
        world: int,
        device: torch.device | str,
    ) -> None:
        self.data, self.batch_size, self.shuffle, self.seed = data, batch_size, shuffle, seed
        self.rank, self.world = rank, world
        self.values = data.values.to(device)
        self.lengths = data.lengths.to(device)
        self.y = data.y.to(device) if data.y is not None else None
        self.rows = len(data) // world  # the same number of rows on every rank
        if self.rows == 0:
            raise ValueError(f"{len(data)} rows cannot be shared by {world} processes")

    def __len__(self) -> int:
        return -(-self.rows // self.batch_size)

    def _order(self, epoch: int) -> list[torch.Tensor]:
        order, g = epoch_order(
            len(self.data), self.rows, shuffle=self.shuffle, seed=self.seed, epoch=epoch, rank=self.rank,
            world=self.world,
        )
        if g is None:
            return list(order.split(self.batch_size))
        return length_buckets(order, self.data.lengths, self.batch_size, g, BUCKET)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        for rows in self._order(epoch)[start:]:
            rows = rows.to(self.values.device)
            lengths = self.lengths[rows]
            width = self.data.fixed or int(lengths.max())
            x = self.values[rows, :width]
            y = self.y[rows] if self.y is not None else None
            yield {self.data.key: x, "attention_mask": _mask(lengths, width)}, y  # type: ignore[misc]


# --------------------------------------------------------------------------- tokenizers
def fit_tokenizer(kind: str, texts: list[str], cfg: Any) -> Any:
    """A `tokenizers.Tokenizer` trained on the training texts ([PAD] = 0, [UNK] = 1)."""
    try:
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    except ImportError:
        raise DanluError("text data needs the tokenizers package: pip install 'danlu[hf]'") from None
    steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if cfg.lowercase else [])
    normalizer = normalizers.Sequence(steps)
    if kind == "char":
        counts = Counter(c for t in texts for c in normalizer.normalize_str(t))
        chars = [c for c, n in counts.most_common(cfg.vocab_size - len(SPECIALS)) if n >= cfg.min_frequency]
        vocab = {t: i for i, t in enumerate(SPECIALS + sorted(chars))}
        # a BPE model without merges is a character vocabulary with an unknown token
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
        tok.add_special_tokens(SPECIALS)
        tok.normalizer = normalizer
        tok.decoder = decoders.Fuse()
        return tok
    opts = {"vocab_size": cfg.vocab_size, "min_frequency": cfg.min_frequency, "special_tokens": SPECIALS}
    if kind == "word":
        tok = Tokenizer(models.WordLevel(unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()  # words, and runs of punctuation
        trainer = trainers.WordLevelTrainer(show_progress=False, **opts)
    elif kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(show_progress=False, **opts)
    else:  # byte-level BPE: every text is representable, nothing is unknown
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), **opts
        )
    tok.normalizer = normalizer
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def tokenizer_file(spec: str) -> Any:
    """The `tokenizers.Tokenizer` of a tokenizer.json file, or of a folder holding one, that a
    config names (text columns here; language models in danlu/lm/data.py)."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise DanluError("a tokenizer.json needs the tokenizers package: pip install 'danlu[hf]'") from None
    path = Path(spec)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise DanluError(f"data.tokenizer: '{spec}' is not char, bpe or a tokenizer.json file (not found)")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises plain Exceptions for bad files
        raise DanluError(f"{path}: not a tokenizers tokenizer.json: {str(e).splitlines()[0]}") from None


def _given_tokenizer(path: str) -> Any:
    tok = tokenizer_file(path)
    if _pad_id(tok) is None:
        tok.add_special_tokens([PAD])  # a padding token the model can mask out
    return tok


def _pad_id(tok: Any) -> int | None:
    padding = tok.padding
    if padding and padding.get("pad_token") is not None:
        found = tok.token_to_id(padding["pad_token"])
        if found is not None:
            return int(found)
    for name in (PAD, "<pad>", "<|pad|>", "[pad]"):
        found = tok.token_to_id(name)
        if found is not None:
            return int(found)
    return None


def pretrained_tokenizer(folder: Path) -> Any:
    """The encoder's own tokenizer as a `tokenizers.Tokenizer` (what a fast transformers
    tokenizer runs, special tokens included)."""
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise DanluError(f"{folder}: cannot load the tokenizer: {' '.join(str(e).split())[:300]}") from None
    if not getattr(hf, "is_fast", False):
        raise DanluError(f"{folder}: the tokenizer has no fast (tokenizers) version; add a tokenizer.json")
    tok = hf.backend_tokenizer
    if hf.pad_token_id is not None and _pad_id(tok) is None:
        tok.enable_padding(pad_id=hf.pad_token_id, pad_token=hf.pad_token)  # read back by _pad_id
    return tok


# --------------------------------------------------------------------------- text preprocessing
@dataclass
class TextPreprocessor:
    """Fitted on the training split; its tokenizer is tokenizer.json in the run folder."""

    column: str
    tokenizer: str  # char | word | wordpiece | bpe | file | pretrained
    max_length: int
    truncation: bool
    padding: str
    pad_id: int
    target: TabularPreprocessor
    pretrained: dict[str, Any] | None = None
    tok: Any = field(default=None, repr=False)
    kind: str = "text"

    @classmethod
    def fit(
        cls, df: pd.DataFrame, cfg: Any, target: TabularPreprocessor, where: str, model_cfg: Any
    ) -> TextPreprocessor:
        tc = cfg.text
        texts = _texts(df, tc.column, where)
        pretrained = None
        if getattr(model_cfg, "type", "") == "pretrained_encoder":
            if tc.tokenizer != "auto":
                raise DanluError(
                    f"data.text.tokenizer: '{tc.tokenizer}' cannot be used with a pretrained encoder,"
                    " which reads its own tokenizer's ids; remove it (or set auto)"
                )
            from transformers import AutoConfig

            from danlu.hub import model_folder

            folder = model_folder(model_cfg.path)
            config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
            limit = getattr(config, "max_position_embeddings", None)
            if limit is not None and tc.max_length > limit:
                raise DanluError(
                    f"data.text.max_length: {tc.max_length} is more than the encoder's"
                    f" {limit} positions ({folder}); use at most {limit}"
                )
            tok, kind = pretrained_tokenizer(folder), "pretrained"
            pretrained = {
                "base": str(model_cfg.path),
                "folder": str(folder.resolve()),
                "config": config.to_dict(),
            }
        elif tc.tokenizer in ("auto", *TOKENIZERS):
            kind = "word" if tc.tokenizer == "auto" else tc.tokenizer
            tok = fit_tokenizer(kind, texts, tc)
        else:
            tok, kind = _given_tokenizer(tc.tokenizer), "file"
        pad = _pad_id(tok)
        pre = cls(
            tc.column, kind, tc.max_length, tc.truncation, tc.padding, pad or 0, target, pretrained, tok
        )
        pre._configure()
        return pre

    def _configure(self) -> None:
        # truncation inside the tokenizer keeps special tokens ([SEP]) at the end and
        # reports what it cut; padding is ours, per batch
        self.tok.no_padding()
        self.tok.enable_truncation(self.max_length)

    # ---- encoding
    def encode(self, df: pd.DataFrame, where: str) -> list[list[int]]:
        texts = _texts(df, self.column, where)
        encodings = self.tok.encode_batch(texts)
        if not self.truncation:
            long = np.array([bool(e.overflowing) for e in encodings])
            if long.any():
                first = int(np.argmax(long))
                full = _untruncated_length(self.tok, texts[first], self.max_length)
                raise DanluError(
                    f"{where}: row {_row_numbers(long, df.index, limit=1).split(',')[0]} of column"
                    f" '{self.column}' has {full} tokens, more than data.text.max_length"
                    f" {self.max_length} ({int(long.sum())} row(s) in all); raise max_length or set"
                    " data.text.truncation: true"
                )
        return [e.ids for e in encodings]

    def dataset(self, df: pd.DataFrame, where: str = "data", with_target: bool = True) -> SequenceData:
        ids = self.encode(df, where)
        lengths = torch.tensor([max(len(i), 1) for i in ids], dtype=torch.long)
        width = self.max_length if self.padding == "max_length" else int(lengths.max())
        values = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        for r, row in enumerate(ids):
            values[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        y = self.target.transform_target(df, where) if with_target else None
        fixed = self.max_length if self.padding == "max_length" else 0
        return SequenceData("input_ids", values, lengths, y, fixed)

    def transform(self, df: pd.DataFrame, where: str = "data") -> dict[str, torch.Tensor]:
        return self.dataset(df, where, with_target=False).inputs

    def frame(self, rows: Any) -> pd.DataFrame:
        """Predictor input: a list of strings (or one string), or rows with the text column."""
        if isinstance(rows, str):
            rows = [rows]
        if isinstance(rows, list | tuple) and rows and all(isinstance(r, str) for r in rows):
            return pd.DataFrame({self.column: list(rows)})
        if isinstance(rows, pd.DataFrame):
            return rows
        if isinstance(rows, list | tuple) and rows and isinstance(rows[0], dict):
            return pd.DataFrame(list(rows))
        raise DanluError(
            f"input: give a list of strings or rows with a '{self.column}' column, not {type(rows).__name__}"
        )

    # ---- target (delegated to the tabular target encoding)
    def transform_target(self, df: pd.DataFrame, where: str = "data") -> torch.Tensor:
        return self.target.transform_target(df, where)

    def inverse_target(self, y: np.ndarray) -> np.ndarray:
        return self.target.inverse_target(y)

    target_center = property(lambda self: self.target.target_center)
    target_scale = property(lambda self: self.target.target_scale)
    classes = property(lambda self: self.target.classes)

    # ---- saving
    def schema(self) -> SequenceSchema:
        return SequenceSchema(
            task=self.target.task,
            targets=self.target.targets,
            classes=self.target.classes,
            input_kind="text",
            column=self.column,
            max_length=self.max_length,
            vocab_size=self.tok.get_vocab_size(),
            pad_id=self.pad_id,
            tokenizer=self.tokenizer,
            pretrained=self.pretrained,
        )

    def state(self) -> dict[str, Any]:
        keep = ("column", "tokenizer", "max_length", "truncation", "padding", "pad_id", "pretrained", "kind")
        return {
            **{k: getattr(self, k) for k in keep},
            "target": self.target.state(),
            "file": "tokenizer.json",
        }

    def save_files(self, run_dir: Path) -> None:
        from danlu import fileio
        from danlu.run import RunDir

        fileio.write_text(RunDir(run_dir).tokenizer, self.tok.to_str())

    @classmethod
    def from_state(cls, state: dict[str, Any], run_dir: Path) -> TextPreprocessor:
        from tokenizers import Tokenizer

        path = Path(run_dir) / state.get("file", "tokenizer.json")
        if not path.is_file():
            raise DanluError(f"{path}: the run's tokenizer is missing; the run folder is incomplete")
        state = {k: v for k, v in state.items() if k != "file"}
        target = TabularPreprocessor.from_state(state.pop("target"))
        pre = cls(**state, target=target, tok=Tokenizer.from_file(str(path)))
        pre._configure()
        return pre


def _untruncated_length(tok: Any, text: str, max_length: int) -> int:
    tok.no_truncation()
    try:
        return len(tok.encode(text).ids)
    finally:
        tok.enable_truncation(max_length)


def _texts(df: pd.DataFrame, column: str, where: str) -> list[str]:
    if column not in df.columns:
        raise DanluError(
            f"{where}: text column '{column}' not found{did_you_mean(column, df.columns)};"
            f" columns are: {', '.join(map(str, df.columns))} (set data.text.column)"
        )
    col = df[column]
    missing = col.isna().to_numpy()
    if missing.any():
        raise DanluError(
            f"{where}: text column '{column}' has {int(missing.sum())} empty value(s)"
            f" (rows {_row_numbers(missing, df.index)})"
        )
    not_text = ~col.map(lambda v: isinstance(v, str)).to_numpy()
    if not_text.all() or (not_text.mean() > 0.5):
        raise DanluError(
            f"{where}: column '{column}' holds {col.dtype} values, not text (e.g. {col.iloc[0]!r});"
            " data.text.column must name a column of strings"
        )
    return [v if isinstance(v, str) else str(v) for v in col.tolist()]


# --------------------------------------------------------------------------- numeric sequences
@dataclass
class SequencePreprocessor:
    """Numeric sequences: per-feature standardization fitted on the training split."""

    column: str
    max_length: int
    truncation: bool
    n_features: int
    center: list[float]
    scale: list[float]
    target: TabularPreprocessor
    kind: str = "sequence"

    @classmethod
    def fit(cls, df: pd.DataFrame, cfg: Any, target: TabularPreprocessor, where: str) -> SequencePreprocessor:
        sc = cfg.sequence
        rows = _arrays(df, sc.column, where)
        n_features = rows[0].shape[1]
        pre = cls(
            sc.column,
            sc.max_length,
            sc.truncation,
            n_features,
            [0.0] * n_features,
            [1.0] * n_features,
            target,
        )
        pre._check(rows, df, where)
        if sc.scale:
            flat = np.concatenate(rows)
            std = flat.std(axis=0)
            pre.center = flat.mean(axis=0).tolist()
            pre.scale = np.where(std > 1e-12, std, 1.0).tolist()
        return pre

    def _check(self, rows: list[np.ndarray], df: pd.DataFrame, where: str) -> None:
        widths = np.array([r.shape[1] != self.n_features for r in rows])
        if widths.any():
            i = int(np.argmax(widths))
            raise DanluError(
                f"{where}: row {_row_numbers(widths, df.index, 1).split(',')[0]} of column '{self.column}'"
                f" has {rows[i].shape[1]} values per step; training rows have {self.n_features}"
            )
        long = np.array([len(r) > self.max_length for r in rows])
        if long.any() and not self.truncation:
            i = int(np.argmax(long))
            raise DanluError(
                f"{where}: row {_row_numbers(long, df.index, 1).split(',')[0]} of column '{self.column}'"
                f" has {len(rows[i])} steps, more than data.sequence.max_length {self.max_length};"
                " raise max_length or set data.sequence.truncation: true"
            )

    def dataset(self, df: pd.DataFrame, where: str = "data", with_target: bool = True) -> SequenceData:
        rows = _arrays(df, self.column, where)
        self._check(rows, df, where)
        rows = [r[: self.max_length] for r in rows]
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        values = torch.zeros((len(rows), int(lengths.max()), self.n_features))
        center, scale = np.asarray(self.center), np.asarray(self.scale)
        for i, r in enumerate(rows):
            values[i, : len(r)] = torch.as_tensor((r - center) / scale, dtype=torch.float32)
        y = self.target.transform_target(df, where) if with_target else None
        return SequenceData("x", values, lengths, y)

    def transform(self, df: pd.DataFrame, where: str = "data") -> dict[str, torch.Tensor]:
        return self.dataset(df, where, with_target=False).inputs

    def frame(self, rows: Any) -> pd.DataFrame:
        if isinstance(rows, pd.DataFrame):
            return rows
        if isinstance(rows, list | tuple) and rows and isinstance(rows[0], dict):
            return pd.DataFrame(list(rows))
        return pd.DataFrame({self.column: [np.asarray(r, dtype=float) for r in rows]})

    def transform_target(self, df: pd.DataFrame, where: str = "data") -> torch.Tensor:
        return self.target.transform_target(df, where)

    def inverse_target(self, y: np.ndarray) -> np.ndarray:
        return self.target.inverse_target(y)

    target_center = property(lambda self: self.target.target_center)
    target_scale = property(lambda self: self.target.target_scale)
    classes = property(lambda self: self.target.classes)

    def schema(self) -> SequenceSchema:
        return SequenceSchema(
            task=self.target.task,
            targets=self.target.targets,
            classes=self.target.classes,
            input_kind="sequence",
            column=self.column,
            max_length=self.max_length,
            n_features=self.n_features,
        )

    def state(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "target"} | {"target": self.target.state()}

    def save_files(self, run_dir: Path) -> None:
        pass

    @classmethod
    def from_state(cls, state: dict[str, Any], run_dir: Path) -> SequencePreprocessor:
        state = dict(state)
        return cls(**state | {"target": TabularPreprocessor.from_state(state["target"])})


def _arrays(df: pd.DataFrame, column: str, where: str) -> list[np.ndarray]:
    """The list column -> one (steps x features) float array per row."""
    if column not in df.columns:
        raise DanluError(
            f"{where}: sequence column '{column}' not found{did_you_mean(column, df.columns)};"
            f" columns are: {', '.join(map(str, df.columns))} (set data.sequence.column)"
        )
    out = []
    for i, v in zip(df.index, df[column].tolist(), strict=True):
        if isinstance(v, str):
            try:
                v = json.loads(v)
            except json.JSONDecodeError:
                v = None
        try:
            a = np.asarray(v, dtype=np.float32)
        except (TypeError, ValueError):
            a = np.zeros((0,))
        if a.ndim == 1:
            a = a[:, None]
        if a.ndim != 2 or len(a) == 0 or not np.isfinite(a).all():
            row = int(i) + 1 if isinstance(i, int | np.integer) else i
            raise DanluError(
                f"{where}: row {row} of column '{column}' is not a non-empty list of numbers"
                f" (or of equal-length lists of numbers); got {str(v)[:60]!r}"
            )
        out.append(a)
    return out


def read_arrays(cfg: Any) -> pd.DataFrame:
    """An .npy (N x T [x F], targets from data.sequence.targets) or .npz (arrays named by
    data.sequence.column and .targets) -> a frame with the sequence and target columns."""
    sc, path = cfg.sequence, Path(cfg.path)
    if not path.is_file():
        raise DanluError(f"{path}: data file not found")
    target = cfg.target if isinstance(cfg.target, str) else "target"
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                for k in (sc.column, sc.targets or target):
                    if k not in keys:
                        raise DanluError(
                            f"{path}: no array '{k}'{did_you_mean(k, keys)}; arrays are: {', '.join(keys)}"
                            " (set data.sequence.column / data.sequence.targets)"
                        )
                x, y = z[sc.column], z[sc.targets or target]
        else:
            if not sc.targets:
                raise DanluError(f"data.sequence.targets: {path} holds inputs only; name the .npy of targets")
            x = np.load(path, allow_pickle=False)
            y = np.load(sc.targets, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DanluError(f"{path}: cannot read the array: {e}") from None
    if x.ndim not in (2, 3):
        raise DanluError(f"{path}: inputs have shape {x.shape}; expected N x T or N x T x F")
    if len(y) != len(x):
        raise DanluError(f"{path}: {len(x)} input sequences but {len(y)} targets")
    return pd.DataFrame({sc.column: list(x), target: list(y) if y.ndim > 1 else y})


def preprocessor_from_state(state: dict[str, Any], run_dir: Path) -> TextPreprocessor | SequencePreprocessor:
    """A saved text or numeric-sequence preprocessor (model.json names which by its "kind")."""
    cls = SequencePreprocessor if state.get("kind") == "sequence" else TextPreprocessor
    return cls.from_state(state, run_dir)


# --------------------------------------------------------------------------- build
def build(
    cfg: Any, frames: dict[str, pd.DataFrame], task_type: str, targets: list[str], model_cfg: Any, where: Any
) -> tuple[SequenceSchema, TextPreprocessor | SequencePreprocessor, dict[str, SequenceData]]:
    """Fit on frames["train"]; every split as SequenceData."""
    train = frames["train"]
    target = TabularPreprocessor.fit(train, cfg, task_type, targets, where("train"), [], [])
    if getattr(model_cfg, "type", "") not in (
        "rnn",
        "transformer",
        "pretrained_encoder",
        "custom",
        None,
    ) and ":" not in str(getattr(model_cfg, "type", "")):
        raise DanluError(
            f"model.type: '{model_cfg.type}' does not read {'text' if cfg.text else 'sequences'};"
            " use rnn, transformer" + (" or pretrained_encoder" if cfg.text else "")
        )
    pre: TextPreprocessor | SequencePreprocessor
    if cfg.text is not None:
        pre = TextPreprocessor.fit(train, cfg, target, where("train"), model_cfg)
    else:
        if getattr(model_cfg, "type", "") == "pretrained_encoder":
            raise DanluError(
                "model.type: pretrained_encoder reads text; numeric sequences take rnn or transformer"
            )
        pre = SequencePreprocessor.fit(train, cfg, target, where("train"))
    splits = {name: pre.dataset(df, where(name)) for name, df in frames.items()}
    return pre.schema(), pre, splits
