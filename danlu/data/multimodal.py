"""Multimodal rows: several named inputs of one table (`data.inputs`), each with its kind:
numeric/categorical columns (tabular), a text column, or an image-path column.

Each input is prepared by its own kind's preprocessor (TabularPreprocessor,
TextPreprocessor, ImagePreprocessor), fitted on the training split only, and reaches the
model as named tensors "<input>.<key>" (e.g. review.input_ids, photo.x) so the trainer's
`model(**x)` hands each encoder its own arguments.

A row whose input is empty (blank text, no image path, a missing number) is an error
naming the file row and the input, unless `data.allow_missing` lists the input: then the
row gets a stand-in value and a "<input>.present" flag, and the model puts a learned
"missing" vector in place of that input's features.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import torch

from danlu.data.batches import epoch_order
from danlu.data.tabular import Schema, TabularPreprocessor, TensorData, looks_numeric, read_table
from danlu.errors import DanluError, did_you_mean

# what can encode each kind of input (user models "pkg.mod:Class" fit any)
ENCODERS = {
    "tabular": ("mlp",),
    "text": ("rnn", "transformer", "pretrained_encoder"),
    "image": ("cnn", "resnet"),
}


# --------------------------------------------------------------------------- schema
@dataclass
class MultimodalSchema:
    """The target, and each input's own schema (what its encoder is sized from)."""

    task: str
    targets: list[str]
    classes: list[Any] | None
    inputs: dict[str, Any]  # name -> Schema (tabular, image) or SequenceSchema (text)
    kinds: dict[str, str]  # name -> tabular | text | image
    missing: list[str] = field(default_factory=list)  # inputs that may be missing in a row
    input_kind: str = "multimodal"

    @property
    def features(self) -> list[str]:
        return [c for s in self.inputs.values() for c in s.features]

    @property
    def n_classes(self) -> int:
        return len(self.classes or [])

    @property
    def class_names(self) -> list[str]:
        return [str(c) for c in self.classes or []]

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["inputs"] = {name: s.to_dict() for name, s in self.inputs.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MultimodalSchema:
        from danlu.data.sequences import SequenceSchema

        d = dict(d)
        d["inputs"] = {
            name: (SequenceSchema if d["kinds"][name] == "text" else Schema).from_dict(s)
            for name, s in d["inputs"].items()
        }
        return cls(**d)


def check_names(inputs: Any, encoders: Any) -> None:
    """data.inputs and model.encoders must name the same inputs: one line listing both."""
    a, b = list(inputs), list(encoders)
    if set(a) == set(b):
        return
    problems = [f"no encoder for '{n}'" for n in a if n not in b]
    problems += [f"no input named '{n}'{did_you_mean(n, a)}" for n in b if n not in a]
    raise DanluError(
        f"data.inputs and model.encoders must name the same inputs: data.inputs has"
        f" {{{', '.join(a)}}}, model.encoders has {{{', '.join(b)}}} ({'; '.join(problems)})"
    )


def check_model(cfg: Any, model_cfg: Any) -> None:
    """The model reads these inputs: type fusion, the same names, an encoder fit for each kind."""
    t = getattr(model_cfg, "type", None)
    if t is None or ":" in t:
        return
    if t != "fusion":
        raise DanluError(
            f"model.type: '{t}' reads one input, but data.inputs declares {len(cfg.inputs)}"
            f" ({', '.join(cfg.inputs)}); use model.type: fusion with one encoder per input"
        )
    check_names(cfg.inputs, model_cfg.encoders)
    for name, icfg in cfg.inputs.items():
        enc = model_cfg.encoders[name].type
        if ":" not in enc and enc not in ENCODERS[icfg.kind]:
            raise DanluError(
                f"model.encoders.{name}.type: {enc} cannot encode {icfg.kind} input '{name}';"
                f" use {' or '.join(ENCODERS[icfg.kind])}"
            )


# --------------------------------------------------------------------------- split data
class MultimodalData:
    """One split: each input's part (tensors, padded token ids, or images decoded per batch),
    the presence flags of inputs that may be missing, and the targets."""

    def __init__(
        self,
        parts: dict[str, Any],
        kinds: dict[str, str],
        present: dict[str, torch.Tensor],
        y: torch.Tensor | None,
        n: int,
    ) -> None:
        self.parts, self.present, self.y, self.n = parts, present, y, n
        self.kinds = set(kinds.values())

    def __len__(self) -> int:
        return self.n

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        world: int = 1,
        device: torch.device | str = "cpu",
    ) -> MultimodalBatches:
        from danlu.data.images import EVAL_BATCH

        if not shuffle and "image" in self.kinds:  # evaluation: decoded images in modest batches
            batch_size = min(batch_size, EVAL_BATCH)
        return MultimodalBatches(self, batch_size, shuffle, seed, rank, world, device)


class MultimodalBatches:
    """Batches of one epoch from batch `start` on, in TensorBatches' order (a permutation
    seeded by (seed, epoch), sharded rank::world), so a resumed run continues exactly.
    Token ids are cut to each batch's longest row; images come from their own ImageBatches
    (same order; decoded by DataLoader workers when they are read from disk)."""

    def __init__(
        self,
        data: MultimodalData,
        batch_size: int,
        shuffle: bool,
        seed: int,
        rank: int,
        world: int,
        device: torch.device | str,
    ) -> None:
        from danlu.data.images import ImageBatches, ImageSplit
        from danlu.data.sequences import SequenceData

        self.data, self.batch_size, self.shuffle, self.seed = data, batch_size, shuffle, seed
        self.rank, self.world = rank, world
        self.rows = len(data) // world  # the same number of rows on every rank
        if self.rows == 0:
            raise ValueError(f"{len(data)} rows cannot be shared by {world} processes")
        self.tensors: dict[str, torch.Tensor] = {}  # "<input>.<key>" -> rows
        self.sequences: dict[str, tuple[torch.Tensor, torch.Tensor, int, str]] = {}
        self.images: dict[str, Any] = {}
        for name, part in data.parts.items():
            if isinstance(part, SequenceData):
                self.sequences[name] = (part.values.to(device), part.lengths.to(device), part.fixed, part.key)
            elif isinstance(part, ImageSplit):
                self.images[name] = ImageBatches(
                    part, batch_size, shuffle=shuffle, seed=seed, rank=rank, world=world, device=device
                )
            else:
                self.tensors.update({f"{name}.{k}": v.to(device) for k, v in part.inputs.items()})
        self.tensors.update({f"{name}.present": p.to(device) for name, p in data.present.items()})
        self.y = data.y.to(device) if data.y is not None else None

    def __len__(self) -> int:
        return -(-self.rows // self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        order, _ = epoch_order(
            len(self.data), self.rows, shuffle=self.shuffle, seed=self.seed, epoch=epoch, rank=self.rank,
            world=self.world,
        )
        return order

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        order, bs = self.order(epoch), self.batch_size
        for ib in self.images.values():  # one order for every input, or rows would not line up
            if not torch.equal(ib.order(epoch), order):
                raise RuntimeError("image batches and the other inputs disagree on the row order")
        streams = {name: ib.epoch(epoch, start) for name, ib in self.images.items()}
        for i in range(start, len(self)):
            rows = order[i * bs : (i + 1) * bs]
            x = {k: v[rows.to(v.device)] for k, v in self.tensors.items()}
            for name, (values, lengths, fixed, key) in self.sequences.items():
                r = rows.to(values.device)
                n = lengths[r]
                width = fixed or int(n.max())
                x[f"{name}.{key}"] = values[r, :width]
                x[f"{name}.attention_mask"] = (torch.arange(width, device=n.device) < n[:, None]).long()
            for name, stream in streams.items():
                x[f"{name}.x"] = next(stream)[0]["x"]
            y = self.y[rows.to(self.y.device)] if self.y is not None else None
            yield x, y  # type: ignore[misc]


# --------------------------------------------------------------------------- preprocessing
@dataclass
class MultimodalPreprocessor:
    """One fitted preprocessor per input plus the target's encoding; saved in model.json as
    kind "multimodal" (each text input's tokenizer as tokenizer-<input>.json)."""

    inputs: dict[str, Any]  # name -> TabularPreprocessor | TextPreprocessor | ImagePreprocessor
    kinds: dict[str, str]
    columns: dict[str, list[str]]
    target: TabularPreprocessor
    allow_missing: list[str] = field(default_factory=list)
    impute: list[str] = field(default_factory=list)  # tabular inputs missing only when every cell is
    kind: str = "multimodal"

    # ---- fitting
    @classmethod
    def fit(
        cls, train: pd.DataFrame, cfg: Any, task: str, targets: list[str], where: str, model_cfg: Any
    ) -> MultimodalPreprocessor:
        target = TabularPreprocessor(
            features=[],
            numeric=[],
            categorical=[],
            encoding="onehot",
            missing="error",
            task=task,
            targets=targets,
        )
        target._fit_target(train, where, cfg.scale_target)
        pre = cls(
            inputs={},
            kinds={name: icfg.kind for name, icfg in cfg.inputs.items()},
            columns={
                name: list(icfg.columns) if icfg.kind == "tabular" else [icfg.column]
                for name, icfg in cfg.inputs.items()
            },
            target=target,
            allow_missing=list(cfg.inputs) if cfg.allow_missing is True else list(cfg.allow_missing or []),
            impute=[
                n
                for n, i in cfg.inputs.items()
                if i.kind == "tabular" and (i.missing or cfg.missing) == "impute"
            ],
        )
        encoders = getattr(model_cfg, "encoders", None) or {}
        for name, icfg in cfg.inputs.items():
            present = pre.present(train, name, where)
            if not present.any():
                raise DanluError(
                    f"{where}: input '{name}' is empty in every training row; nothing to learn from"
                )
            rows = train[present]
            if icfg.kind == "tabular":
                pre.inputs[name] = pre._fit_tabular(rows, name, icfg, cfg, where)
            elif icfg.kind == "text":
                from danlu.data.sequences import TextPreprocessor

                pre.inputs[name] = TextPreprocessor.fit(
                    rows, SimpleNamespace(text=icfg), target, where, encoders.get(name)
                )
            else:
                pre.inputs[name] = pre._fit_image(rows, name, icfg, where)
        return pre

    def _fit_tabular(
        self, rows: pd.DataFrame, name: str, icfg: Any, cfg: Any, where: str
    ) -> TabularPreprocessor:
        columns = list(icfg.columns)
        if icfg.categorical is not None:
            for c in icfg.categorical:
                if c not in columns:
                    raise DanluError(
                        f"data.inputs.{name}.categorical: '{c}' is not one of its columns"
                        f"{did_you_mean(c, columns)}; columns are: {', '.join(columns)}"
                    )
            categorical = [c for c in columns if c in icfg.categorical]
        else:
            categorical = [c for c in columns if not looks_numeric(rows[c])]
        # rows kept for an allowed-missing input still need finite values: impute them
        missing = "impute" if name in self.impute or name in self.allow_missing else "error"
        options = SimpleNamespace(
            encoding=icfg.encoding or cfg.encoding,
            missing=missing,
            impute_numeric=icfg.impute_numeric or cfg.impute_numeric,
            scale=icfg.scale or cfg.scale,
            scale_target=cfg.scale_target,
        )
        return TabularPreprocessor.fit(
            rows, options, self.target.task, self.target.targets, where, columns, categorical
        )

    def _fit_image(self, rows: pd.DataFrame, name: str, icfg: Any, where: str) -> Any:
        """The image preprocessing of data/images.py, fitted on this input's training images."""
        from danlu.data.images import ImagePreprocessor, _size, channel_stats, probe

        items = self._image_items(rows, name, where)
        (h, w), gray = probe(items[:256])
        channels = gray if icfg.channels == "auto" else int(icfg.channels)
        size = _size(icfg.size) or _size(icfg.resize) or [h, w]
        resize = _size(icfg.resize) or size
        if resize[0] < size[0] or resize[1] < size[1]:
            raise DanluError(
                f"data.inputs.{name}.resize {resize} is smaller than its size {size}; crops need room"
            )
        pre = ImagePreprocessor(
            column=icfg.column,
            channels=channels,
            size=size,
            resize=resize,
            value_range=[0.0, 255.0],
            mean=[0.0] * channels,
            std=[1.0] * channels,
            labels=self.target,
            augment=icfg.augment.model_dump(mode="json"),
            in_memory=icfg.in_memory,
            memory_mb=icfg.memory_mb,
            workers=icfg.workers,
        )
        if icfg.normalize == "auto":
            frame = rows.assign(**{icfg.column: pd.Series(items, index=rows.index, dtype=object)})
            loaded = pre.load(items, where) if pre.in_memory_for(items) else None
            pre.mean, pre.std = channel_stats(pre, frame, where, loaded)
        return pre

    # ---- presence
    def present(self, df: pd.DataFrame, name: str, where: str) -> np.ndarray:
        """Rows where input `name` has a value; an error naming the first empty row unless
        the input may be missing."""
        cols = self.columns[name]
        for c in cols:
            if c not in df.columns:
                raise DanluError(
                    f"{where}: input '{name}' reads column '{c}', which is not in the data"
                    f"{did_you_mean(c, df.columns)}; columns are: {', '.join(map(str, df.columns))}"
                )
        empty = np.stack([_empty(df[c]) for c in cols], axis=1)
        absent = empty.all(axis=1) if name in self.impute else empty.any(axis=1)
        if absent.any() and name not in self.allow_missing:
            i = int(np.argmax(absent))
            row = df.index[i]
            row = int(row) + 1 if isinstance(row, int | np.integer) else row
            column = next(c for c, e in zip(cols, empty[i], strict=True) if e)
            what = {"tabular": "value", "text": "text", "image": "image path"}[self.kinds[name]]
            more = f"; {int(absent.sum())} rows in all" if absent.sum() > 1 else ""
            raise DanluError(
                f"{where}: row {row} has no {what} for input '{name}' (column '{column}' is empty{more});"
                f" fill it, or let it be missing with data.allow_missing: [{name}]"
            )
        return ~absent

    # ---- rows -> model inputs
    def input_frames(
        self, df: pd.DataFrame, where: str = "data"
    ) -> tuple[dict[str, pd.DataFrame], dict[str, np.ndarray]]:
        """Each input's own frame, for its own preprocessor (an absent value blanked, image
        paths resolved), and the rows where it is present. Shared by `dataset` and the ONNX
        export (danlu/onnx/rows.py), which feeds each input to its part of the graph."""
        frames: dict[str, pd.DataFrame] = {}
        present: dict[str, np.ndarray] = {}
        for name in self.inputs:
            ok = self.present(df, name, where)
            kind, cols = self.kinds[name], self.columns[name]
            if kind == "tabular":
                frame = (
                    df if ok.all() else df[cols].where(pd.DataFrame({c: ok for c in cols}, index=df.index))
                )
            elif kind == "text":
                text = np.where(ok, df[cols[0]].to_numpy(dtype=object), "")
                frame = pd.DataFrame({cols[0]: text}, index=df.index)  # the file's rows, for errors
            else:
                items = self._image_items(df, name, where, ok)
                frame = pd.DataFrame({cols[0]: pd.Series(items, index=df.index, dtype=object)})
            frames[name], present[name] = frame, ok
        return frames, present

    def dataset(
        self, df: pd.DataFrame, where: str = "data", with_target: bool = True, augment: bool = False
    ) -> MultimodalData:
        parts: dict[str, Any] = {}
        present: dict[str, torch.Tensor] = {}
        frames, ok = self.input_frames(df, where)
        for name, pre in self.inputs.items():
            kind, frame = self.kinds[name], frames[name]
            if kind == "tabular":
                parts[name] = TensorData(pre.transform(frame, where), None)
            elif kind == "text":
                parts[name] = pre.dataset(frame, where, with_target=False)
            else:
                parts[name] = pre.split(frame, where, pre.augment if augment else None, with_target=False)
            if name in self.allow_missing:
                present[name] = torch.as_tensor(ok[name])
        y = self.target.transform_target(df, where) if with_target else None
        return MultimodalData(parts, self.kinds, present, y, len(df))

    def _image_items(
        self, df: pd.DataFrame, name: str, where: str, ok: np.ndarray | None = None
    ) -> list[Any]:
        """Image paths resolved against the data file's folder (df.attrs["image_base"]);
        a missing image stands in as another row's image (or a blank one): its features
        are replaced by the model's learned "missing" vector anyway."""
        column = self.columns[name][0]
        base = Path(df.attrs.get("image_base", "."))
        items: list[Any] = []
        for i, v in zip(df.index, df[column].tolist(), strict=True):
            if isinstance(v, str):
                p = Path(v) if Path(v).is_absolute() else base / v
                if (ok is None or ok[len(items)]) and not p.is_file():
                    row = int(i) + 1 if isinstance(i, int | np.integer) else i
                    raise DanluError(
                        f"{where}: row {row} of input '{name}': image file '{v}' not found (looked for {p})"
                    )
                v = str(p)
            items.append(v)
        if ok is not None and not ok.all():
            shown = [v for v, good in zip(items, ok, strict=True) if good]
            pre = self.inputs[name]
            blank = np.zeros((pre.channels, *pre.resize), dtype=np.uint8)
            stand_in = shown[0] if shown else blank
            items = [v if good else stand_in for v, good in zip(items, ok, strict=True)]
        return items

    def frame(self, rows: Any) -> pd.DataFrame:
        """Predictor input: a DataFrame, a list of row dicts, or one row dict."""
        if isinstance(rows, pd.DataFrame):
            return rows
        if isinstance(rows, dict):
            rows = [rows]
        if isinstance(rows, list | tuple) and rows and all(isinstance(r, dict) for r in rows):
            return pd.DataFrame(list(rows))
        names = ", ".join(f"{n} ({', '.join(self.columns[n])})" for n in self.inputs)
        raise DanluError(f"input: give rows (a DataFrame or dicts) with the columns of each input: {names}")

    def read(self, path: str | Path) -> pd.DataFrame:
        """A table given to `predict --input` / `evaluate --data`; image paths in it are
        relative to its folder."""
        df = read_table(path)
        df.attrs["image_base"] = str(Path(path).parent)
        return df

    # ---- the target
    task = property(lambda self: self.target.task)
    targets = property(lambda self: self.target.targets)
    classes = property(lambda self: self.target.classes)
    target_center = property(lambda self: self.target.target_center)
    target_scale = property(lambda self: self.target.target_scale)

    def transform_target(self, df: pd.DataFrame, where: str = "data") -> torch.Tensor:
        return self.target.transform_target(df, where)

    def inverse_target(self, y: np.ndarray) -> np.ndarray:
        return self.target.inverse_target(y)

    # ---- saving
    def schema(self) -> MultimodalSchema:
        return MultimodalSchema(
            task=self.task,
            targets=self.targets,
            classes=self.classes,
            inputs={name: pre.schema() for name, pre in self.inputs.items()},
            kinds=dict(self.kinds),
            missing=list(self.allow_missing),
        )

    def state(self) -> dict[str, Any]:
        inputs = {}
        for name, pre in self.inputs.items():
            s = pre.state()
            if self.kinds[name] == "text":
                s["file"] = f"tokenizer-{name}.json"
            inputs[name] = s
        return {
            "kind": self.kind,
            "inputs": inputs,
            "kinds": self.kinds,
            "columns": self.columns,
            "target": self.target.state(),
            "allow_missing": self.allow_missing,
            "impute": self.impute,
        }

    def save_files(self, run_dir: Path) -> None:
        from danlu import fileio

        for name, pre in self.inputs.items():
            if self.kinds[name] == "text":
                fileio.write_text(Path(run_dir) / f"tokenizer-{name}.json", pre.tok.to_str())

    @classmethod
    def from_state(cls, state: dict[str, Any], run_dir: Path) -> MultimodalPreprocessor:
        from danlu.data.images import ImagePreprocessor
        from danlu.data.sequences import TextPreprocessor

        inputs: dict[str, Any] = {}
        for name, s in state["inputs"].items():
            kind = state["kinds"][name]
            if kind == "tabular":
                inputs[name] = TabularPreprocessor.from_state(s)
            elif kind == "text":
                inputs[name] = TextPreprocessor.from_state(s, run_dir)
            else:
                inputs[name] = ImagePreprocessor.from_state(s)
        return cls(
            inputs=inputs,
            kinds=dict(state["kinds"]),
            columns={k: list(v) for k, v in state["columns"].items()},
            target=TabularPreprocessor.from_state(state["target"]),
            allow_missing=list(state.get("allow_missing", [])),
            impute=list(state.get("impute", [])),
        )


def _empty(s: pd.Series) -> np.ndarray:
    """Cells holding nothing: NaN/None, infinities, blank strings (arrays count as values)."""

    def empty(v: Any) -> bool:
        if isinstance(v, str):
            return not v.strip()
        if isinstance(v, float | np.floating):
            return not np.isfinite(v)
        return v is None or v is pd.NA or v is pd.NaT

    return np.fromiter((empty(v) for v in s.tolist()), dtype=bool, count=len(s))


# --------------------------------------------------------------------------- build
def build(cfg: Any, task_type: str, seed: int, model_cfg: Any, pretrained: Any = None) -> Any:
    """RunConfig.data with `inputs` -> Prepared(schema, MultimodalPreprocessor, splits, frames)."""
    from danlu.data.frames import Prepared, _read_frames, _split, _where

    check_model(cfg, model_cfg)
    if cfg.source:
        raise DanluError(
            "data.inputs reads a file (data.path or data.train); built-in datasets have one input"
        )
    frames, targets, where, task_type = _read_frames(cfg, task_type)
    files = {name: getattr(cfg, name) or cfg.train for name in ("train", "val", "test")}
    if "all" in frames:
        frames = _split(frames.pop("all"), cfg, task_type, targets, seed, where)
        files = dict.fromkeys(files, cfg.path)
    elif "val" not in frames and cfg.split.val > 0:
        no_test = cfg.model_copy(update={"split": cfg.split.model_copy(update={"test": 0.0})})
        frames.update(_split(frames.pop("train"), no_test, task_type, targets, seed, where))
    for name, df in frames.items():  # image paths are relative to their table's folder
        df.attrs["image_base"] = str(Path(files[name]).parent)
    pre = MultimodalPreprocessor.fit(
        frames["train"], cfg, task_type, targets, _where(cfg, "train"), model_cfg
    )
    splits = {
        name: pre.dataset(df, _where(cfg, name), augment=name == "train") for name, df in frames.items()
    }
    return Prepared(pre.schema(), pre, splits, frames)  # type: ignore[arg-type]
