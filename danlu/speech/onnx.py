"""The audio kind's `export_onnx` hook: a speech run's network from features to outputs.

Inputs `features` (float32, batch x frames x feature_dim: log-mel frames, or samples for a
waveform model, computed as metadata.json's preprocessing says) and `lengths` (int64, real
frames per row). Outputs: a CTC model's `log_probs` (batch x frames' x (vocab + 1), blank at
0) and `out_lengths`; an audio classifier's `logits`. Checked on generated features (audio
is decoded and featurised outside the graph, by danlu.speech.data.Featurizer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from danlu.onnx.graph import Graph, argmax
from danlu.onnx.rnn import Unpacked
from danlu.speech.model import CTCModel


class Network(nn.Module):
    """features, lengths -> the model's outputs, as a tuple for the exporter."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> Any:
        return self.model(features, lengths)


class UnpackedCTC(nn.Module):
    """CTCModel.forward of a GRU/LSTM encoder with the recurrence unpacked (danlu/onnx/rnn.py):
    what the exporters can write faithfully; the same parameters."""

    def __init__(self, model: CTCModel) -> None:
        super().__init__()
        self.model, self.rnn = model, Unpacked(model.rnn)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        x, lengths = m.subsample(features, lengths)
        lengths = lengths.clamp(1, x.shape[1])
        x, _ = self.rnn(m.drop(x), lengths)
        return F.log_softmax(m.head(m.drop(x)), dim=-1), lengths


def graph(run_dir: str | Path, trust_code: bool = False) -> Graph:
    from danlu.speech.recognizer import Recognizer

    rec = Recognizer(run_dir, trust_code)
    schema, featurizer = rec.schema, rec.featurizer
    ctc = schema.task == "speech_recognition"
    rng = np.random.default_rng(0)
    frames = 64 if featurizer.kind != "waveform" else schema.sample_rate // 2
    features = rng.normal(size=(4, frames, featurizer.dim)).astype(np.float32)
    lengths = np.array([frames, frames * 3 // 4, frames // 2, frames // 4 + 1], dtype=np.int64)
    features[np.arange(frames)[None, :] >= lengths[:, None]] = 0.0  # padding, as batches hold it
    outputs = ["log_probs", "out_lengths"] if ctc else ["logits"]
    axes = {"features": {0: "batch", 1: "frames"}, "lengths": {0: "batch"}}
    axes |= {"log_probs": {0: "batch", 1: "out_frames"}, "out_lengths": {0: "batch"}} if ctc else {}
    axes |= {} if ctc else {"logits": {0: "batch"}}
    unpacked = isinstance(rec.model, CTCModel) and rec.model.encoder_kind in ("gru", "lstm")
    return Graph(
        module=(UnpackedCTC(rec.model) if unpacked else Network(rec.model)).eval(),
        reference=Network(rec.model).eval() if unpacked else None,
        inputs=["features", "lengths"],
        outputs=outputs,
        dynamic_axes=axes,
        sample=[{"features": features, "lengths": lengths}],
        sample_from="generated inputs (features)",
        preprocessing={
            "inputs": {
                "features": {
                    "dtype": "float32",
                    "outside": f"mono audio at {schema.sample_rate} Hz -> features"
                    " (danlu.speech.data.Featurizer), rows padded with zeros to the longest",
                    "featurizer": featurizer.state(),
                },
                "lengths": {"dtype": "int64", "outside": "real frames of each row"},
            },
            "decode": "CTC: best path over log_probs[:, :out_lengths], blank = 0, id i = vocab[i - 1]"
            if ctc
            else "softmax(logits) over labels",
            "vocab": schema.vocab if ctc else None,
        },
        labels=[str(c) for c in schema.classes or []] or None,
        predicted=argmax,
        about={"graph": "speech", "task": schema.task},
    )
