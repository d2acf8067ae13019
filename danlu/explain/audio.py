"""The audio kind's explain hook, for speech classifiers: which moments of a clip moved the
prediction. Occlusion over time: the clip is cut into WINDOWS equal windows and each in turn
is silenced (the baseline is silence); a window's attribution is f(clip) - f(clip with it
silent), f the class logit (by default of the predicted class). One PNG per clip: the
waveform with each window shaded by its attribution. Speech recognition (CTC) runs are not
explained (their output is a sequence, not one score).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from danlu.errors import DanluError
from danlu.explain import Explanation, check_method, load_predictor, target_index
from danlu.fileio import atomic_path

WINDOWS = 20
MAX_PNGS = 32  # waveform plots written per call (the table has every clip)


class AudioExplainer:
    methods = ("occlusion",)
    kind = "audio"

    def __init__(self, recognizer: Any) -> None:
        if recognizer.schema.task == "speech_recognition":
            raise DanluError(
                f"{recognizer.path}: speech recognition runs cannot be explained yet; audio classifiers can"
            )
        self.rec, self.run, self.schema = recognizer, recognizer.run, recognizer.schema
        self.png_dir: Path | None = None

    def read(self, path: str | Path) -> list[Path]:
        from danlu.speech.audio import find_audio
        from danlu.speech.recognizer import _input_files

        return find_audio(_input_files(path))

    def split(self, name: str) -> Any:
        raise DanluError("--split: explain an audio run's files: give --input FILE or FOLDER")

    def logits(self, waves: list[np.ndarray]) -> torch.Tensor:
        rec = self.rec
        feats = [rec.featurizer(torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))) for w in waves]
        x = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
        with torch.no_grad():
            return rec.model(x, torch.tensor([len(f) for f in feats])).double()

    def explain(
        self, rows: Any, method: str = "occlusion", target: Any = None, where: str = "input"
    ) -> Explanation:
        check_method(method, self.methods, self.kind)
        from danlu.speech.audio import load_audio

        files = [Path(f) for f in ([rows] if isinstance(rows, str | Path) else rows)]
        table, windows = [], []
        for i, f in enumerate(files):
            wave = load_audio(f, self.rec.sample_rate)
            edges = np.linspace(0, len(wave), WINDOWS + 1).astype(int)
            variants = [wave]
            for a, b in zip(edges[:-1], edges[1:], strict=True):
                silent = wave.copy()
                silent[a:b] = 0.0
                variants.append(silent)
            out = self.logits(variants + [np.zeros_like(wave)])
            t = target_index(self.schema, target, out[:1].argmax(1))
            scores = out[:, int(t[0])].numpy()
            attr = scores[0] - scores[1:-1]
            row: dict[str, Any] = {
                "audio": str(f),
                "prediction": self.schema.classes[int(out[0].argmax())],
                "target": self.schema.class_names[int(t[0])],
                "output": scores[0],
                "baseline_output": scores[-1],
            }
            if self.png_dir is not None and i < MAX_PNGS:
                row["occlusion_png"] = str(
                    plot_waveform(wave, self.rec.sample_rate, edges, attr, self.png_dir / f"{i}.png")
                )
            table.append(row)
            sec = edges / self.rec.sample_rate
            windows += [
                {"row": i, "start": s, "end": e, "attribution": float(v)}
                for s, e, v in zip(sec[:-1], sec[1:], attr, strict=True)
            ]
        frame = pd.DataFrame(windows).merge(pd.DataFrame(table).rename_axis("row").reset_index(), on="row")
        parts = pd.DataFrame(windows).assign(
            part=lambda d: d.groupby("row").cumcount(), abs=lambda d: d["attribution"].abs()
        )
        importance = parts.groupby("part")["abs"].mean()  # per window position, over the clips
        importance.index = [f"window {k + 1}/{WINDOWS}" for k in importance.index]
        info: dict[str, Any] = {"rows": len(files), "baseline": "silence", "windows per clip": WINDOWS}
        pngs = [r["occlusion_png"] for r in table if "occlusion_png" in r]
        if pngs:
            info["pngs"] = pngs
        return Explanation(frame, importance, method, info)


def plot_waveform(wave: np.ndarray, rate: int, edges: np.ndarray, attr: np.ndarray, path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 2.4), layout="constrained")
    ax = fig.subplots()
    t = np.arange(len(wave)) / rate
    ax.plot(t, wave, color="black", linewidth=0.5)
    peak = float(np.abs(attr).max()) or 1.0
    for a, b, v in zip(edges[:-1], edges[1:], attr, strict=True):
        color = (0.86, 0.2, 0.18) if v > 0 else (0.15, 0.55, 0.82)
        ax.axvspan(a / rate, b / rate, color=color, alpha=0.6 * abs(v) / peak, linewidth=0)
    ax.set_xlabel("seconds")
    ax.set_title("occlusion: red windows support the prediction, blue ones oppose it", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    return path


def explainer(run_dir: str | Path, trust_code: bool = False, loaded: Any = None) -> AudioExplainer:
    """The audio kind's explain hook."""
    return AudioExplainer(loaded if loaded is not None else load_predictor(run_dir, trust_code))
