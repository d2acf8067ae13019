"""Audio for training: examples from a manifest or a folder, splits (random, by speaker or
by a file-name rule), the character vocabulary, log-mel features computed in torch,
train-only augmentation (speed, noise, SpecAugment) and batches of similar length.

Decoding and resampling are danlu/speech/audio.py's; everything here works on float32 mono
samples at the configured sample rate. Features of un-perturbed audio are computed once
and kept in memory, so an epoch costs only the model.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from danlu.config import AudioDataConfig, DataConfig
from danlu.data.batches import epoch_order, length_buckets
from danlu.data.tabular import SchemaMethods
from danlu.errors import DanluError, did_you_mean

SPEAKER_PATTERNS = {"fsdd": r"^\d+_([^_]+)_\d+"}  # digit_speaker_index.wav
BLANK = "<blank>"  # CTC blank, always id 0
EVAL_BATCH = 64  # evaluation batches are capped: utterances are padded to the longest


# --------------------------------------------------------------------------- schema
@dataclass
class SpeechSchema(SchemaMethods):
    """What an audio run's model is sized from: feature width, and the character vocabulary
    (speech_recognition, id = index + 1, 0 is the blank) or the classes (classification)."""

    task: str  # speech_recognition | classification
    feature_dim: int
    sample_rate: int
    features: str  # logmel | waveform
    vocab: list[str] | None = None
    classes: list[Any] | None = None
    targets: list[str] = field(default_factory=lambda: ["text"])
    input_kind: str = "audio"
    # the words of the training transcripts: the lexicon of `task.decoder.lexicon: train`
    words: list[str] | None = None


# --------------------------------------------------------------------------- features
def hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default): linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    mel = f / (200.0 / 3)
    log = f >= 1000.0
    return np.where(log, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), mel)


def mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), m * 200.0 / 3)


def mel_filters(n_freqs: int, n_mels: int, sample_rate: int) -> np.ndarray:
    """(n_freqs, n_mels) triangular filters between 0 Hz and Nyquist, each scaled to unit
    area (Slaney normalisation), on the FFT bin frequencies."""
    freqs = np.linspace(0.0, sample_rate / 2, n_freqs)
    edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2), n_mels + 2))
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None, :] - lower) / (center - lower)
    down = (upper - freqs[None, :]) / (upper - center)
    tri = np.maximum(0.0, np.minimum(up, down))
    tri *= 2.0 / (upper - lower)
    return tri.T


class Featurizer:
    """Samples -> (frames, dim) float tensor. `logmel`: log power mel filterbank from
    torch.stft (Hann window, centred frames), normalised per utterance or with statistics
    of the training set; `waveform`: the samples themselves, zero mean and unit variance
    per utterance (what Wav2Vec2 models expect)."""

    def __init__(
        self,
        kind: str,
        sample_rate: int,
        n_mels: int = 80,
        win_ms: float = 25.0,
        hop_ms: float = 10.0,
        normalize: str = "utterance",
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ) -> None:
        self.kind, self.sample_rate, self.n_mels = kind, sample_rate, n_mels
        self.win_ms, self.hop_ms, self.normalize = win_ms, hop_ms, normalize
        self.mean, self.std = mean, std
        self.win = max(1, round(sample_rate * win_ms / 1000))
        self.hop = max(1, round(sample_rate * hop_ms / 1000))
        self.n_fft = 1 << (self.win - 1).bit_length()
        self.window = torch.hann_window(self.win, periodic=True)
        self.mel = torch.from_numpy(mel_filters(self.n_fft // 2 + 1, n_mels, sample_rate)).float()

    @property
    def dim(self) -> int:
        return 1 if self.kind == "waveform" else self.n_mels

    @property
    def frame_seconds(self) -> float:
        return 1.0 / self.sample_rate if self.kind == "waveform" else self.hop / self.sample_rate

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """(samples,) -> (frames, n_mels) natural-log mel power, frames = 1 + samples // hop."""
        # reflect padding needs more samples than half a window; tiny clips pad with zeros
        pad_mode = "reflect" if len(wave) > self.n_fft // 2 else "constant"
        spec = torch.stft(
            wave,
            self.n_fft,
            self.hop,
            self.win,
            self.window,
            center=True,
            pad_mode=pad_mode,
            return_complex=True,
        )
        power = spec.real.square() + spec.imag.square()  # (freqs, frames)
        return (power.T @ self.mel).clamp_min(1e-10).log()

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        if self.kind == "waveform":
            x = wave.float()
            return ((x - x.mean()) / (x.std(unbiased=False) + 1e-7)).unsqueeze(1)
        x = self.log_mel(wave.float())
        if self.normalize == "utterance":
            x = (x - x.mean(0)) / (x.std(0, unbiased=False) + 1e-5)
        elif self.normalize == "global" and self.mean is not None:
            x = (x - torch.tensor(self.mean)) / torch.tensor(self.std)
        return x

    def fit_global(self, waves: list[torch.Tensor]) -> None:
        """Per-bin mean and standard deviation over every training frame."""
        if self.kind != "logmel" or self.normalize != "global":
            return
        total, sq, n = (
            torch.zeros(self.n_mels, dtype=torch.float64),
            torch.zeros(self.n_mels, dtype=torch.float64),
            0,
        )
        for w in waves:
            x = self.log_mel(w.float()).double()
            total += x.sum(0)
            sq += x.square().sum(0)
            n += len(x)
        mean = total / n
        std = (sq / n - mean.square()).clamp_min(1e-10).sqrt()
        self.mean, self.std = mean.tolist(), std.tolist()

    def state(self) -> dict[str, Any]:
        keys = ("kind", "sample_rate", "n_mels", "win_ms", "hop_ms", "normalize", "mean", "std")
        return {k: getattr(self, k) for k in keys}


# --------------------------------------------------------------------------- text
class SpeechPreprocessor:
    """The fitted state saved in model.json: features, and the transcript vocabulary with the
    text normalisation that produced it (or the class list of a classifier)."""

    def __init__(
        self,
        featurizer: Featurizer,
        task: str,
        vocab: list[str] | None = None,
        classes: list[Any] | None = None,
        lowercase: bool = True,
        unknown_chars: str = "error",
        char_map: dict[str, str] | None = None,
    ) -> None:
        self.featurizer, self.task = featurizer, task
        self.vocab, self.classes = vocab, classes
        self.lowercase, self.unknown_chars, self.char_map = lowercase, unknown_chars, dict(char_map or {})
        self._ids = {c: i + 1 for i, c in enumerate(vocab or [])}

    def normalize_text(self, text: str) -> str:
        text = text.lower() if self.lowercase else text
        for a, b in self.char_map.items():
            text = text.replace(a, b)
        return " ".join(text.split())

    def encode(self, text: str, where: str) -> list[int]:
        text = self.normalize_text(text)
        unknown = sorted({c for c in text if c not in self._ids})
        if unknown and self.unknown_chars == "map":  # é -> e, ’ -> ' where Unicode says so
            text = "".join(c if c in self._ids else _fold(c) for c in text)
            unknown = sorted({c for c in text if c not in self._ids})
        if unknown and self.unknown_chars == "error":
            raise DanluError(
                f"{where}: transcript has characters outside the vocabulary: {_show_chars(unknown)};"
                " set data.audio.unknown_chars: drop (or map), add them to data.audio.vocab,"
                " or map them with data.audio.char_map"
            )
        return [self._ids[c] for c in text if c in self._ids]

    def decode(self, ids: list[int]) -> str:
        vocab = self.vocab or []
        return "".join(vocab[i - 1] for i in ids if 0 < i <= len(vocab))

    def label(self, value: Any, where: str) -> int:
        try:
            return (self.classes or []).index(value)
        except ValueError:
            raise DanluError(
                f"{where}: label {value!r} was not seen in training; known labels:"
                f" {', '.join(map(str, self.classes or []))}"
            ) from None

    def state(self) -> dict[str, Any]:
        return {
            "features": self.featurizer.state(),
            "task": self.task,
            "vocab": self.vocab,
            "classes": self.classes,
            "lowercase": self.lowercase,
            "unknown_chars": self.unknown_chars,
            "char_map": self.char_map,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SpeechPreprocessor:
        s = dict(state)
        return cls(Featurizer(**s.pop("features")), **s)


def _fold(c: str) -> str:
    decomposed = unicodedata.normalize("NFKD", c)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _show_chars(chars: list[str]) -> str:
    return ", ".join(repr(c) for c in chars)


# --------------------------------------------------------------------------- examples
@dataclass
class Example:
    path: Path
    label: str  # transcript or class label
    speaker: str
    where: str  # "manifest.csv row 7" or the file, for messages


def read_examples(source: str, acfg: AudioDataConfig, label_column: str, classify: bool) -> list[Example]:
    """A manifest (CSV/TSV/JSONL: audio path relative to the manifest + transcript or label)
    or a folder of recordings (transcripts from .txt files beside them, from the file name, or
    for classification the name of the folder holding the file)."""
    path = Path(source)
    if not path.exists():
        raise DanluError(f"{path}: audio folder or manifest not found")
    if path.is_dir():
        return _folder_examples(path, acfg, classify)
    from danlu.data.tabular import read_table

    df = read_table(path)
    columns = [acfg.audio_column] + ([] if acfg.label_from_name else [label_column])
    for col in columns:
        if col not in df.columns:
            key = "data.audio.audio_column" if col == acfg.audio_column else _label_key(classify)
            raise DanluError(
                f"{path}: column '{col}' not found{did_you_mean(col, df.columns)}; columns are:"
                f" {', '.join(df.columns)} (set {key})"
            )
    out = []
    for i, row in enumerate(df.to_dict("records"), start=1):
        where = f"{path} row {i}"
        value = row[acfg.audio_column]
        if not isinstance(value, str) or not value.strip():
            raise DanluError(f"{where}: no audio path in column '{acfg.audio_column}'")
        audio = (path.parent / value).resolve() if not Path(value).is_absolute() else Path(value)
        if not audio.is_file():
            raise DanluError(f"{where}: audio file '{value}' not found (looked for {audio})")
        if acfg.label_from_name:
            label = _label_from_name(audio, acfg)
        else:
            label = row[label_column]
            if label is None or (isinstance(label, float) and math.isnan(label)):
                label = "" if not classify else None
            if label is None:
                raise DanluError(f"{where}: no label in column '{label_column}'")
            label = str(label)
        speaker = row.get(acfg.speaker_column)
        speaker = str(speaker) if speaker is not None and speaker == speaker else _speaker(audio, acfg)
        out.append(Example(audio, label, speaker, where))
    return out


def _label_key(classify: bool) -> str:
    return "data.target" if classify else "data.audio.text_column"


def _folder_examples(folder: Path, acfg: AudioDataConfig, classify: bool) -> list[Example]:
    from danlu.speech.audio import find_audio

    out = []
    for f in find_audio([folder]):
        if acfg.label_from_name:
            label = _label_from_name(f, acfg)
        elif classify:
            if f.parent == folder:
                raise DanluError(
                    f"{f}: a classification folder holds one sub-folder per class (or set"
                    " data.audio.label_from_name, or use a manifest)"
                )
            label = f.parent.name
        else:
            txt = f.with_suffix(".txt")
            if not txt.is_file():
                raise DanluError(
                    f"{f}: no transcript {txt.name} beside it; a folder of recordings needs a .txt"
                    " per audio file, data.audio.label_from_name, or a manifest"
                )
            label = txt.read_text(encoding="utf-8").strip()
        out.append(Example(f, label, _speaker(f, acfg), str(f)))
    return out


def _label_from_name(f: Path, acfg: AudioDataConfig) -> str:
    rule = acfg.label_from_name
    assert rule is not None
    m = re.search(rule.pattern, f.name)
    if m is None:
        raise DanluError(f"{f}: file name does not match data.audio.label_from_name.pattern '{rule.pattern}'")
    value = m.group(1) if m.groups() else m.group(0)
    if rule.map:
        if value not in rule.map:
            raise DanluError(
                f"{f}: '{value}' from the file name is not in data.audio.label_from_name.map"
                f" (keys: {', '.join(rule.map)})"
            )
        value = rule.map[value]
    return value


def _speaker(f: Path, acfg: AudioDataConfig) -> str:
    if acfg.speaker_pattern is None:
        return ""
    pattern = SPEAKER_PATTERNS.get(acfg.speaker_pattern, acfg.speaker_pattern)
    m = re.search(pattern, f.name)
    if m is None:
        raise DanluError(f"{f}: file name does not match data.audio.speaker_pattern '{acfg.speaker_pattern}'")
    return m.group(1) if m.groups() else m.group(0)


def split_examples(examples: list[Example], cfg: DataConfig, seed: int) -> dict[str, list[Example]]:
    """File-name rules first (test_pattern, val_pattern), then fractions of what is left, by
    utterance or, with split_by: speaker, by whole speakers so test voices are unseen."""
    acfg = cfg.audio or AudioDataConfig()
    s = cfg.split
    seed = s.seed if s.seed is not None else seed
    parts: dict[str, list[Example]] = {}
    rest = examples
    for name in ("test", "val"):
        pattern = getattr(acfg, f"{name}_pattern")
        if pattern is not None:
            parts[name] = [e for e in rest if re.search(pattern, e.path.name)]
            rest = [e for e in rest if not re.search(pattern, e.path.name)]
            if not parts[name]:
                raise DanluError(f"data.audio.{name}_pattern '{pattern}' matches no file")
    rng = np.random.default_rng(seed)
    for name in ("test", "val"):
        frac = getattr(s, name)
        if name in parts or frac <= 0:
            continue
        # val is a fraction of everything, taken from what test left
        frac = frac / (1.0 - s.test) if name == "val" and "test" not in parts and s.test else frac
        if acfg.split_by == "speaker":
            speakers = sorted({e.speaker for e in rest})
            if speakers == [""]:
                raise DanluError(
                    "data.audio.split_by: speaker needs speakers: a manifest column"
                    f" '{acfg.speaker_column}' or data.audio.speaker_pattern"
                )
            k = max(1, round(frac * len(speakers)))
            if k >= len(speakers):
                raise DanluError(
                    f"data.split.{name}: {len(speakers)} speakers cannot give a {name} split and"
                    " leave speakers for training"
                )
            held = set(rng.permutation(speakers)[:k].tolist())
            parts[name] = [e for e in rest if e.speaker in held]
            rest = [e for e in rest if e.speaker not in held]
        else:
            k = int(math.ceil(frac * len(rest)))
            if k == 0 or k >= len(rest):
                raise DanluError(
                    f"data.split.{name}: {frac:g} of {len(rest)} recordings leaves no recordings"
                    f" for {'it' if k == 0 else 'training'}"
                )
            chosen = set(rng.permutation(len(rest))[:k].tolist())
            parts[name] = [e for i, e in enumerate(rest) if i in chosen]
            rest = [e for i, e in enumerate(rest) if i not in chosen]
    if not rest:
        raise DanluError("the splits leave no recordings for training")
    return {"train": rest, **{k: parts[k] for k in ("val", "test") if k in parts}}


# --------------------------------------------------------------------------- build
def read_splits(cfg: DataConfig, label_column: str, classify: bool, seed: int) -> dict[str, list[Example]]:
    """data.path split by rules and fractions, or data.train (+ val/test) manifests or folders."""
    acfg = cfg.audio or AudioDataConfig()
    if cfg.path:
        return split_examples(read_examples(cfg.path, acfg, label_column, classify), cfg, seed)
    parts = {
        s: read_examples(getattr(cfg, s), acfg, label_column, classify)
        for s in ("train", "val", "test")
        if getattr(cfg, s)
    }
    if "val" not in parts and cfg.split.val > 0:
        no_test = cfg.split.model_copy(update={"test": 0.0})
        parts.update(split_examples(parts.pop("train"), cfg.model_copy(update={"split": no_test}), seed))
    return parts


def build(cfg: DataConfig, task_type: str, seed: int, model_cfg: Any = None) -> Any:
    """Read, split, fit the vocabulary (or classes) and the feature normalisation on train,
    load every recording at the model's sample rate."""
    from danlu.data.frames import Prepared

    acfg = cfg.audio or AudioDataConfig()
    model_type = getattr(model_cfg, "type", "")
    if task_type == "auto":
        task_type = "classification" if model_type == "audio_cnn" else "speech_recognition"
    if task_type not in ("speech_recognition", "classification"):
        raise DanluError(f"task.type {task_type}: audio data trains speech_recognition or classification")
    classify = task_type == "classification"
    label_column = (cfg.target if isinstance(cfg.target, str) else None) or (
        "label" if classify else acfg.text_column
    )
    if cfg.source:
        raise DanluError("data.source names a built-in table; audio data comes from data.path or data.train")
    examples = read_splits(cfg, label_column, classify, seed)
    kind = "waveform" if model_type == "wav2vec2_ctc" else "logmel"
    rate = _model_sample_rate(model_cfg) if kind == "waveform" else acfg.sample_rate
    featurizer = Featurizer(kind, rate, acfg.n_mels, acfg.win_ms, acfg.hop_ms, acfg.normalize)
    if classify:
        classes = sorted({e.label for e in examples["train"]}, key=_label_sort_key)
        if len(classes) < 2:
            raise DanluError(
                f"the training recordings hold a single label ({classes!r}); classification needs two"
            )
        pre = SpeechPreprocessor(featurizer, task_type, classes=classes)
    else:
        pre = SpeechPreprocessor(
            featurizer,
            task_type,
            vocab=_vocab(acfg, examples["train"]),
            lowercase=acfg.lowercase,
            unknown_chars=acfg.unknown_chars,
            char_map=acfg.char_map,
        )
    waves = {name: load_waves(exs, rate) for name, exs in examples.items()}
    featurizer.fit_global(waves["train"])
    splits = {
        name: SpeechData.from_examples(exs, waves[name], pre, acfg if name == "train" else None)
        for name, exs in examples.items()
    }
    frames = {
        name: pd.DataFrame({"audio": [str(e.path) for e in exs], "true": [e.label for e in exs]})
        for name, exs in examples.items()
    }
    schema = SpeechSchema(
        task=task_type,
        feature_dim=featurizer.dim,
        sample_rate=rate,
        features=kind,
        vocab=pre.vocab,
        classes=pre.classes,
        targets=[label_column],
        words=None if classify else _words(splits["train"], pre),
    )
    return Prepared(schema, pre, splits, frames)  # type: ignore[arg-type]


def _words(train: Any, pre: SpeechPreprocessor) -> list[str]:
    """The distinct words of the training transcripts, as the model spells them."""
    words = {w for ids in train.targets for w in pre.decode(ids).split()}
    return sorted(words)


def _label_sort_key(v: str) -> tuple[int, Any]:
    return (0, float(v)) if re.fullmatch(r"-?\d+(\.\d+)?", v) else (1, v)


def _model_sample_rate(model_cfg: Any) -> int:
    """A Wav2Vec2 checkpoint's sample rate from its preprocessor_config.json (16 kHz if absent)."""
    import json

    f = Path(model_cfg.path) / "preprocessor_config.json"
    if f.is_file():
        return int(json.loads(f.read_text(encoding="utf-8")).get("sampling_rate", 16000))
    return 16000


def _vocab(acfg: AudioDataConfig, train: list[Example]) -> list[str]:
    probe = SpeechPreprocessor(
        Featurizer("logmel", 16000, 1), "speech_recognition", lowercase=acfg.lowercase, char_map=acfg.char_map
    )
    if acfg.vocab != "auto":
        chars = list(dict.fromkeys(probe.normalize_text(acfg.vocab) if acfg.lowercase else acfg.vocab))
        return chars
    chars = sorted({c for e in train for c in probe.normalize_text(e.label)})
    if not chars:
        raise DanluError("the training transcripts are all empty; speech recognition needs text to learn")
    return chars


def load_waves(examples: list[Example], sample_rate: int) -> list[torch.Tensor]:
    from danlu.speech.audio import load_audio

    out = []
    for e in examples:
        try:
            wave = load_audio(e.path, sample_rate)
        except DanluError as err:
            raise DanluError(f"{e.where}: {err}" if e.where != str(e.path) else str(err)) from None
        out.append(torch.from_numpy(wave))
    return out


# --------------------------------------------------------------------------- splits and batches
@dataclass
class Augment:
    """Training-only perturbations; each batch draws from a generator seeded by (seed, epoch,
    batch), so a resumed run sees the same augmented batches."""

    speed: list[float] = field(default_factory=list)
    snr_db: float | None = None
    specaugment: Any = None  # SpecAugmentConfig

    @property
    def perturbs_audio(self) -> bool:
        return bool(self.speed and any(f != 1.0 for f in self.speed)) or self.snr_db is not None


class SpeechData:
    """One split of recordings: samples in memory, targets, and how to featurize them."""

    def __init__(
        self,
        waves: list[torch.Tensor],
        targets: list[list[int]] | list[int],
        featurizer: Featurizer,
        augment: Augment | None = None,
    ) -> None:
        self.waves, self.targets, self.featurizer, self.augment = waves, targets, featurizer, augment
        self._features: list[torch.Tensor] | None = None

    @classmethod
    def from_examples(
        cls,
        examples: list[Example],
        waves: list[torch.Tensor],
        pre: SpeechPreprocessor,
        acfg: AudioDataConfig | None,
    ) -> SpeechData:
        if pre.task == "classification":
            targets: Any = [pre.label(e.label, e.where) for e in examples]
        else:
            targets = [pre.encode(e.label, e.where) for e in examples]
        augment = None
        if acfg is not None and (acfg.specaugment or acfg.speed_perturb or acfg.noise_snr_db is not None):
            augment = Augment(list(acfg.speed_perturb), acfg.noise_snr_db, acfg.specaugment)
        return cls(waves, targets, pre.featurizer, augment)

    def __len__(self) -> int:
        return len(self.waves)

    @property
    def y(self) -> torch.Tensor:
        """Class ids, or transcripts as ids padded with 0 (never a character id)."""
        if self.targets and isinstance(self.targets[0], list):
            return _pad_ids(self.targets)  # type: ignore[arg-type]
        return torch.tensor(self.targets, dtype=torch.long)

    @property
    def features(self) -> list[torch.Tensor]:
        """Features of the un-perturbed audio, computed once."""
        if self._features is None:
            self._features = [self.featurizer(w) for w in self.waves]
        return self._features

    def lengths(self) -> list[int]:
        return [len(f) for f in self.features]

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        world: int = 1,
        device: torch.device | str = "cpu",
    ) -> SpeechBatches:
        if not shuffle:
            batch_size = min(batch_size, EVAL_BATCH)
        return SpeechBatches(self, batch_size, shuffle, seed, rank, world, device)


class SpeechBatches:
    """Batches of similar length: each epoch shuffles (by seed and epoch), sorts windows of
    50 batches by length, and shuffles the batches, so padding is small but every epoch
    differs. Under DDP each rank takes its shard of the shuffled order first."""

    def __init__(
        self,
        data: SpeechData,
        batch_size: int,
        shuffle: bool,
        seed: int,
        rank: int,
        world: int,
        device: torch.device | str,
    ) -> None:
        self.data, self.batch_size, self.shuffle, self.seed = data, batch_size, shuffle, seed
        self.rank, self.world, self.device = rank, world, device
        self.rows = len(data) // world
        if self.rows == 0:
            raise ValueError(f"{len(data)} recordings cannot be shared by {world} processes")
        self.lengths = torch.tensor(data.lengths())

    def __len__(self) -> int:
        return -(-self.rows // self.batch_size)

    def plan(self, epoch: int) -> list[torch.Tensor]:
        """The epoch's batches as index tensors, fixed by (seed, epoch)."""
        order, g = epoch_order(
            len(self.data),
            self.rows,
            shuffle=self.shuffle,
            seed=self.seed,
            epoch=epoch,
            rank=self.rank,
            world=self.world,
        )
        if g is None:
            return list(order.split(self.batch_size))
        return length_buckets(order, self.lengths, self.batch_size, g)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        plan = self.plan(epoch)
        for i in range(start, len(plan)):
            yield self.collate(plan[i], epoch, i)

    def collate(
        self, index: torch.Tensor, epoch: int, i: int
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        data, aug = self.data, self.data.augment if self.shuffle else None
        g = torch.Generator().manual_seed(hash((self.seed, epoch, i, self.rank)) & (2**62 - 1))
        if aug is not None and aug.perturbs_audio:
            feats = [
                data.featurizer(perturb(data.waves[j], data.featurizer.sample_rate, aug, g)) for j in index
            ]
        else:
            feats = [data.features[j] for j in index]
        lengths = torch.tensor([len(f) for f in feats])
        x = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
        if aug is not None and aug.specaugment is not None:
            x = spec_augment(x, lengths, aug.specaugment, g)
        targets = [data.targets[j] for j in index]
        y = _pad_ids(targets) if targets and isinstance(targets[0], list) else torch.tensor(targets)
        d = self.device
        return {"features": x.to(d), "lengths": lengths.to(d)}, y.to(d)


def _pad_ids(seqs: list[list[int]]) -> torch.Tensor:
    width = max((len(s) for s in seqs), default=0)
    out = torch.zeros(len(seqs), max(width, 1), dtype=torch.long)
    for r, s in enumerate(seqs):
        out[r, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def perturb(wave: torch.Tensor, sample_rate: int, aug: Augment, g: torch.Generator) -> torch.Tensor:
    """Speed perturbation (resampling, as Kaldi's sox `speed`: pitch and tempo together) and
    white noise at a signal-to-noise ratio."""
    if aug.speed:
        factor = aug.speed[int(torch.randint(len(aug.speed), (1,), generator=g))]
        if factor != 1.0:
            import soxr

            wave = torch.from_numpy(soxr.resample(wave.numpy(), sample_rate, sample_rate / factor))
    if aug.snr_db is not None:
        power = wave.square().mean().clamp_min(1e-10)
        noise = torch.randn(len(wave), generator=g) * (power / 10 ** (aug.snr_db / 10)).sqrt()
        wave = wave + noise
    return wave


def spec_augment(x: torch.Tensor, lengths: torch.Tensor, cfg: Any, g: torch.Generator) -> torch.Tensor:
    """Zero (= the normalised mean) random bands of frames and of mel bins in each utterance,
    never wider than the utterance."""
    x = x.clone()
    n_bins = x.shape[2]
    for b in range(len(x)):
        t = int(lengths[b])
        for _ in range(cfg.time_masks):
            w = int(torch.randint(0, min(cfg.time_width, max(t // 5, 1)) + 1, (1,), generator=g))
            s = int(torch.randint(0, max(t - w, 0) + 1, (1,), generator=g))
            x[b, s : s + w] = 0.0
        for _ in range(cfg.freq_masks):
            w = int(torch.randint(0, min(cfg.freq_width, n_bins) + 1, (1,), generator=g))
            s = int(torch.randint(0, n_bins - w + 1, (1,), generator=g))
            x[b, :t, s : s + w] = 0.0
    return x


def eval_split(
    cfg: Any, pre: SpeechPreprocessor, schema: SpeechSchema, split: str, data: str | Path | None
) -> tuple[SpeechData, pd.DataFrame, str]:
    """A saved run's split (re-read and re-split as in training) or a new manifest/folder,
    featurized with the run's fitted preprocessing (never re-fitted)."""
    classify = schema.task == "classification"
    acfg = cfg.data.audio or AudioDataConfig()
    label_column = schema.targets[0]
    if data is not None:
        examples, name = read_examples(str(data), acfg, label_column, classify), Path(data).name
    else:
        parts = read_splits(cfg.data, label_column, classify, cfg.seed)
        if split not in parts:
            raise DanluError(f"--split {split}: this run has no '{split}' split; it has: {', '.join(parts)}")
        examples, name = parts[split], split
    waves = load_waves(examples, pre.featurizer.sample_rate)
    frame = pd.DataFrame({"audio": [str(e.path) for e in examples], "true": [e.label for e in examples]})
    return SpeechData.from_examples(examples, waves, pre, None), frame, name
