"""The exportable forward of the rows kinds (tables, images, text and numeric sequences,
multimodal rows): the `export_onnx` hook `graph`, and the batches onnxruntime is fed.

What stays outside the graph is only what ONNX cannot do from torch: reading files, decoding
and resizing images, tokenizing text, filling gaps and mapping category strings to codes.
What the run fitted moves inside it:
- tables: inputs `numeric` (float64, the raw values of the numeric columns, gaps filled) and
  `categories` (int64, each value's index in its column's training categories, -1 unseen);
  the graph scales the numbers and one-hot encodes (or embeds) the codes;
- images: input `pixels` (float32, N x C x H x W in [0, 1], resized and cropped); the graph
  normalises with the training split's per-channel mean and std;
- text: inputs `input_ids`, `attention_mask` (int64, N x tokens); the run's tokenizer is
  saved beside the model as tokenizer.json;
- numeric sequences: `x` (float32, N x steps x features, already standardised) and
  `attention_mask`;
- multimodal rows: each input's own, named "<input>.<name>", and "<input>.present" (bool) for
  an input allowed to be missing.
The output is the model's raw output: `logits` (classification) or `outputs` (regression),
decoded as metadata.json's preprocessing.decode says.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from danlu import config as config_mod
from danlu import data as data_mod
from danlu.data.sequences import SequencePreprocessor, TextPreprocessor, _mask
from danlu.data.tabular import TabularPreprocessor
from danlu.errors import DanluError
from danlu.onnx.graph import Batch, Graph, argmax
from danlu.onnx.rnn import without_packing
from danlu.predict import Predictor
from danlu.registry import reading_saved
from danlu.run import RunDir

BATCH = 256  # rows per batch, as the PyTorch predictor batches sequences
SAMPLE = 512  # rows of the test split checked at export time


# --------------------------------------------------------------------------- one input each
class TabularInput(nn.Module):
    """Raw numbers and category codes -> the MLP's `x` (and `x_cat`): the fitted scaling and
    the one-hot (or embedding) encoding inside the graph. The scaling runs in float64, as the
    PyTorch path's NumPy preprocessing does, so both give the model the same float32 input."""

    def __init__(self, pre: TabularPreprocessor, prefix: str = "") -> None:
        super().__init__()
        self.pre, self.prefix = pre, prefix
        self.numeric = f"{prefix}numeric" if pre.numeric else None
        self.codes = f"{prefix}categories" if pre.categorical else None
        self.onehot = pre.encoding == "onehot"
        self.sizes = [len(pre.categories[c]) for c in pre.categorical]
        self.register_buffer("center", torch.tensor(pre.center, dtype=torch.float64))
        self.register_buffer("scale", torch.tensor(pre.scale, dtype=torch.float64))

    @property
    def names(self) -> list[str]:
        return [n for n in (self.numeric, self.codes) if n]

    def forward(self, given: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        blocks = []
        if self.numeric:
            blocks.append(((given[self.numeric] - self.center) / self.scale).float())
        codes = given[self.codes] if self.codes else None
        if codes is not None and self.onehot:
            for j, n in enumerate(self.sizes):  # an unseen category (-1) is all zeros
                blocks.append((codes[:, j : j + 1] == torch.arange(n, device=codes.device)).float())
        if blocks:
            x = torch.cat(blocks, dim=1)
        else:  # only embedded categories
            assert codes is not None
            x = torch.zeros(codes.shape[0], 0, device=codes.device)
        out = {f"{self.prefix}x": x}
        if codes is not None and not self.onehot:
            out[f"{self.prefix}x_cat"] = codes + 1  # row 0 of each table is the unseen category
        return out

    def arrays(self, frame: pd.DataFrame, where: str) -> Batch:
        num, codes = self.pre.raw(frame, where)
        out: Batch = {}
        if self.numeric:
            out[self.numeric] = num.astype(np.float64)
        if self.codes:
            out[self.codes] = codes.astype(np.int64)
        return out

    def generate(self, n: int, rng: np.random.Generator) -> Batch:
        out: Batch = {}
        if self.numeric:
            out[self.numeric] = rng.normal(self.pre.center, self.pre.scale, (n, len(self.pre.numeric)))
        if self.codes:
            out[self.codes] = np.stack([rng.integers(-1, k, n) for k in self.sizes], axis=1).astype(np.int64)
        return out

    def batch(self, arrays: Batch, rows: slice) -> Batch:
        return {k: v[rows] for k, v in arrays.items()}

    def describe(self) -> dict[str, Any]:
        pre, d = self.pre, {}
        if self.numeric:
            d[self.numeric] = {
                "columns": pre.numeric,
                "dtype": "float64",
                "outside": "each column as a number; a gap is an error"
                if pre.missing == "error"
                else "each column as a number; a gap takes its fill value",
                "fill": {c: pre.fill[c] for c in pre.numeric if c in pre.fill},
                "inside": "(numeric - center) / scale",
                "center": pre.center,
                "scale": pre.scale,
            }
        if self.codes:
            d[self.codes] = {
                "columns": pre.categorical,
                "dtype": "int64",
                "outside": "each value (as a string) -> its index in categories[column]; -1 for a value"
                " not listed",
                "categories": pre.categories,
                "fill": {c: pre.fill[c] for c in pre.categorical if c in pre.fill},
                "inside": "one-hot per column" if self.onehot else "embedding row code + 1 (0: unseen)",
            }
        return d


class ImageInput(nn.Module):
    """Pixels in [0, 1] at the model's size -> normalised with the training split's mean/std."""

    def __init__(self, pre: Any, prefix: str = "") -> None:
        super().__init__()
        self.pre, self.prefix, self.pixels = pre, prefix, f"{prefix}pixels"
        self.names = [self.pixels]
        shape = (1, pre.channels, 1, 1)
        self.register_buffer("mean", torch.tensor(pre.mean, dtype=torch.float32).view(shape))
        self.register_buffer("std", torch.tensor(pre.std, dtype=torch.float32).view(shape))

    def forward(self, given: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {f"{self.prefix}x": (given[self.pixels] - self.mean) / self.std}

    def arrays(self, frame: pd.DataFrame, where: str) -> Batch:
        from danlu.data.images import ImagePreprocessor

        pre = self.pre
        items = list(frame[pre.column])
        base = frame.attrs.get("image_base")
        if base:  # paths as written in a CSV, relative to its folder
            items = [str(Path(base) / p) if isinstance(p, str) else p for p in items]
        raw = pre.load(items, where)
        # what the model sees before normalisation: the same steps as the PyTorch path
        plain = ImagePreprocessor(
            **{**pre.__dict__, "mean": [0.0] * pre.channels, "std": [1.0] * pre.channels}
        )
        pixels = torch.cat([plain.to_model(raw[i : i + 1024]) for i in range(0, len(raw), 1024)])
        return {self.pixels: pixels.numpy().astype(np.float32)}

    def generate(self, n: int, rng: np.random.Generator) -> Batch:
        return {self.pixels: rng.random((n, self.pre.channels, *self.pre.size), dtype=np.float32)}

    def batch(self, arrays: Batch, rows: slice) -> Batch:
        return {k: v[rows] for k, v in arrays.items()}

    def describe(self) -> dict[str, Any]:
        pre = self.pre
        return {
            self.pixels: {
                "dtype": "float32",
                "shape": ["batch", pre.channels, *pre.size],
                "outside": f"decode as {'grayscale' if pre.channels == 1 else 'RGB'}, resize to {pre.resize}"
                f" (bilinear, antialiased), center-crop to {pre.size}, scale to [0, 1] (8-bit: / 255;"
                f" other arrays: from the training range {pre.value_range})",
                "inside": "(pixels - mean) / std per channel",
                "mean": pre.mean,
                "std": pre.std,
            }
        }


class TokenInput(nn.Module):
    """Token ids (text) or standardised steps (numeric sequences) and their attention mask,
    passed to the model as they are; each batch is padded to its own longest row."""

    def __init__(self, pre: TextPreprocessor | SequencePreprocessor, prefix: str = "") -> None:
        super().__init__()
        self.pre, self.prefix = pre, prefix
        self.text = isinstance(pre, TextPreprocessor)
        self.key = "input_ids" if self.text else "x"
        self.names = [f"{prefix}{self.key}", f"{prefix}attention_mask"]
        self.fixed = pre.max_length if self.text and pre.padding == "max_length" else 0

    def forward(self, given: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {n: given[n] for n in self.names}

    def arrays(self, frame: pd.DataFrame, where: str) -> Batch:
        data = self.pre.dataset(frame, where, with_target=False)
        ids, mask = self.names
        return {ids: data.values.numpy(), mask: _mask(data.lengths, data.values.shape[1]).numpy()}

    def generate(self, n: int, rng: np.random.Generator) -> Batch:
        ids, mask = self.names
        lengths = rng.integers(1, min(self.pre.max_length, 24) + 1, n)
        width = self.fixed or int(lengths.max())
        m = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
        if self.text:
            assert isinstance(self.pre, TextPreprocessor)
            values = rng.integers(0, self.pre.tok.get_vocab_size(), (n, width)).astype(np.int64)
            values = np.where(m > 0, values, self.pre.pad_id)
        else:
            values = (rng.normal(size=(n, width, self.pre.n_features)) * m[..., None]).astype(np.float32)
        return {ids: values, mask: m}

    def batch(self, arrays: Batch, rows: slice) -> Batch:
        ids, mask = self.names
        m = arrays[mask][rows]
        width = self.fixed or int(m.sum(1).max())
        return {ids: arrays[ids][rows, :width], mask: m[:, :width]}

    def describe(self) -> dict[str, Any]:
        ids, mask = self.names
        pre = self.pre
        if isinstance(pre, TextPreprocessor):
            first = {
                "dtype": "int64",
                "outside": f"tokenize column '{pre.column}' with the tokenizer saved beside the model"
                f" ({pre.tokenizer}), at most {pre.max_length} tokens"
                + (", truncated" if pre.truncation else "")
                + f"; pad with id {pre.pad_id}",
            }
        else:
            first = {
                "dtype": "float32",
                "outside": f"column '{pre.column}' as steps x {pre.n_features} numbers, standardised:"
                " (x - center) / scale per feature; padding steps are 0",
                "center": pre.center,
                "scale": pre.scale,
            }
        return {ids: first, mask: {"dtype": "int64", "outside": "1 for a real token or step, 0 for padding"}}


def input_part(pre: Any, prefix: str = "") -> TabularInput | ImageInput | TokenInput:
    """The graph's part for one fitted preprocessor."""
    if isinstance(pre, TabularPreprocessor):
        return TabularInput(pre, prefix)
    if isinstance(pre, TextPreprocessor | SequencePreprocessor):
        return TokenInput(pre, prefix)
    if getattr(pre, "kind", "") == "image":
        return ImageInput(pre, prefix)
    raise DanluError(
        f"no ONNX graph for a {type(pre).__name__} input (tables, images, text and sequences have one)"
    )


# --------------------------------------------------------------------------- the whole row
class RowsForward(nn.Module):
    """Graph inputs (positional, in `names` order) -> the model's raw outputs: each input's
    part turns its graph inputs into the model's arguments, then the model runs."""

    def __init__(self, model: nn.Module, preprocessor: Any) -> None:
        super().__init__()
        self.model, self.preprocessor = model, preprocessor
        self.multimodal = hasattr(preprocessor, "input_frames")
        if self.multimodal:
            pres = preprocessor.inputs
            self.parts = nn.ModuleList(input_part(pre, f"{name}.") for name, pre in pres.items())
            self.present = [f"{name}.present" for name in pres if name in preprocessor.allow_missing]
        else:
            self.parts = nn.ModuleList([input_part(preprocessor)])
            self.present = []
        self.names = [n for part in self.parts for n in part.names] + self.present

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        given = dict(zip(self.names, tensors, strict=True))
        kwargs: dict[str, torch.Tensor] = {}
        for part in self.parts:
            kwargs.update(part(given))
        kwargs.update({n: given[n] for n in self.present})
        return self.model(**kwargs)

    def batches(self, frame: pd.DataFrame, where: str = "input") -> Iterator[Batch]:
        """Rows -> batches of graph inputs (what onnxruntime is fed), in file order."""
        if self.multimodal:
            frames, ok = self.preprocessor.input_frames(frame, where)
            arrays = [p.arrays(frames[p.prefix[:-1]], where) for p in self.parts]
            present = {f"{name}.present": ok[name] for name in self.preprocessor.allow_missing}
        else:
            arrays, present = [self.parts[0].arrays(frame, where)], {}
        for i in range(0, len(frame), BATCH):
            rows = slice(i, i + BATCH)
            batch: Batch = {}
            for part, a in zip(self.parts, arrays, strict=True):
                batch.update(part.batch(a, rows))
            batch.update({k: v[rows] for k, v in present.items()})
            yield batch

    def generate(self, n: int = 64, seed: int = 0) -> Batch:
        rng = np.random.default_rng(seed)
        batch: Batch = {}
        for part in self.parts:
            batch.update(part.generate(n, rng))
        batch.update({name: rng.random(n) < 0.8 for name in self.present})
        return batch

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for part in self.parts:
            d.update(part.describe())
        for name in self.present:
            d[name] = {"dtype": "bool", "outside": "false where the row has no value for this input"}
        return d

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes: dict[str, dict[int, str]] = {}
        for part in self.parts:
            for n in part.names:
                axes[n] = {0: "batch"}
            if isinstance(part, TokenInput) and not part.fixed:
                for n in part.names:
                    prefix = part.prefix.replace(".", "_")  # axis names are identifiers
                    axes[n][1] = f"{prefix}tokens" if part.text else f"{prefix}steps"
        axes.update({n: {0: "batch"} for n in self.present})
        return axes

    def files(self, run_dir: Path) -> dict[str, Path]:
        """The tokenizers the text inputs need, copied beside the model."""
        if self.multimodal:
            names = [f"tokenizer-{p.prefix[:-1]}.json" for p in self.parts if getattr(p, "text", False)]
        else:
            names = ["tokenizer.json"] if getattr(self.parts[0], "text", False) else []
        return {n: run_dir / n for n in names}


# --------------------------------------------------------------------------- the hook
def graph(run_dir: str | Path, trust_code: bool = False) -> Graph:
    """The rows kinds' `export_onnx` hook: the run's model behind its preprocessing, checked on
    (up to SAMPLE rows of) its test split, or on generated inputs when the data is not at hand."""
    predictor = Predictor(run_dir, trust_code)
    for m in list(predictor.model.modules()):  # pretrained encoders: LoRA adapters merged
        if hasattr(m, "merge_lora"):
            m.merge_lora()
    forward = RowsForward(predictor.model, predictor.preprocessor).eval()
    exportable = without_packing(predictor.model)
    module = (
        forward if exportable is predictor.model else RowsForward(exportable, predictor.preprocessor).eval()
    )
    rows, sample_from = split_rows(predictor.run, predictor.schema.task, trust_code)
    sample = list(forward.batches(rows, sample_from)) if rows is not None else [forward.generate()]
    schema, task = predictor.schema, predictor.task
    classification = schema.task == "classification"
    binary = bool(getattr(task, "binary_logit", False))
    if classification and binary:
        decode = f"sigmoid(logits[:, 0]) is the probability of '{schema.class_names[1]}'"
    elif classification:
        decode = "softmax(logits) over labels, in their order"
    else:
        decode = {
            "rule": "outputs * target_scale + target_center, one column per target",
            "targets": schema.targets,
            "target_scale": list(predictor.preprocessor.target_scale),
            "target_center": list(predictor.preprocessor.target_center),
        }
    output = "logits" if classification else "outputs"
    axes = forward.dynamic_axes() | {output: {0: "batch"}}
    return Graph(
        module=module,
        reference=forward if module is not forward else None,
        inputs=forward.names,
        outputs=[output],
        dynamic_axes=axes,
        sample=sample,
        sample_from=sample_from,
        preprocessing={"inputs": forward.describe(), "decode": decode},
        labels=schema.class_names if classification else None,
        predicted=(lambda out: (out[:, 0] > 0).astype(np.int64))
        if binary
        else argmax
        if classification
        else None,
        files=forward.files(predictor.run.path),
        about={"graph": "rows", "task": schema.task},
    )


def split_rows(run: RunDir, task: str, trust_code: bool) -> tuple[pd.DataFrame | None, str]:
    """Up to SAMPLE rows of the run's test split (else validation, else training), re-read and
    re-split as `danlu evaluate` does; (None, why) when its data cannot be read here."""
    try:
        with reading_saved(run.config, trust_code):  # the folder's names, not the caller's context
            cfg = config_mod.load(run.config)
            prepared = data_mod.build(cfg.data, task, cfg.seed, cfg.model)
    except (DanluError, OSError) as e:
        return None, f"generated inputs (the run's data: {e})"
    for split in ("test", "val", "train"):
        if split in prepared.frames:
            frame = prepared.frames[split]
            return frame.iloc[:SAMPLE], f"{split} split ({min(len(frame), SAMPLE)} rows)"
    return None, "generated inputs"
