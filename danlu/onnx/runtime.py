"""`danlu predict RUN --runtime auto|torch|onnx`: prediction through onnxruntime with the
export in RUN/onnx (`danlu export RUN --format onnx RUN/onnx`), with the same outputs as the
PyTorch path (rows runs: tables, images, text, multimodal rows).

--runtime auto (the default): onnxruntime when RUN/onnx holds an export and onnxruntime was
the faster of the two when it was exported (metadata.json's "faster", measured once on the
run's test split at export time, same threads); PyTorch otherwise.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from danlu.errors import DanluError, choose_from
from danlu.predict import Predictor
from danlu.run import RunDir

RUNTIMES = ("auto", "torch", "onnx")
FOLDER = "onnx"  # where `predict --runtime onnx` looks for a run's export: RUN/onnx


def load_predictor(run_dir: str | Path, trust_code: bool = False, runtime: str = "torch") -> Any:
    """`danlu.load(run, runtime=...)`: the run's predictor (its kind's `load` hook) with
    runtime="torch" (the default), or the predictor over its ONNX export (runtime="onnx"),
    or whichever was the faster when it was exported (runtime="auto", as `danlu predict`).
    trust_code: the folder may name user code, and importing it runs that code."""
    return load(run_dir, trust_code, runtime)[0]


def load(run_dir: str | Path, trust_code: bool = False, runtime: str = "auto") -> tuple[Any, str]:
    """The run's predictor in the runtime asked for -> (predictor, a line saying which runtime
    when there was a choice, else "")."""
    from danlu.predict import load as load_torch

    if runtime not in RUNTIMES:
        raise choose_from(runtime, RUNTIMES, "--runtime")
    folder = Path(run_dir) / FOLDER
    exported = (folder / "model.onnx").is_file() and (folder / "metadata.json").is_file()
    if runtime == "torch" or (runtime == "auto" and not exported):
        return load_torch(run_dir, trust_code), ""
    if not exported:
        raise DanluError(
            f"--runtime onnx: {folder} holds no ONNX export; make one with"
            f" `danlu export {run_dir} --format onnx {folder}`"
        )
    meta = read_metadata(folder)
    timing = meta.get("timing") or {}
    measured = (
        f"{timing.get('onnxruntime_ms')} ms vs {timing.get('torch_ms')} ms for PyTorch on"
        f" {timing.get('rows')} rows when exported"
    )
    if runtime == "auto" and meta.get("faster") != "onnxruntime":
        return load_torch(run_dir, trust_code), f"runtime: torch (onnxruntime took {measured})"
    if runtime == "auto" and meta.get("weights_sha256") != weights_hash(RunDir.open(run_dir)):
        stale = f"{folder} was exported from other weights; export again with --force to use it"
        return load_torch(run_dir, trust_code), f"runtime: torch ({stale})"
    why = "--runtime onnx" if runtime == "onnx" else measured
    return OnnxPredictor(run_dir, folder, trust_code), f"runtime: onnxruntime ({why})"


def read_metadata(folder: Path) -> dict[str, Any]:
    try:
        meta = json.loads((folder / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DanluError(f"{folder / 'metadata.json'}: cannot read: {e}") from None
    if not isinstance(meta, dict):
        raise DanluError(f"{folder / 'metadata.json'}: not the metadata of a danlu ONNX export")
    return meta


class OnnxPredictor(Predictor):
    """The PyTorch predictor's preprocessing and decoding around onnxruntime: only the
    forward pass (`outputs`) runs elsewhere, fed the batches rows.RowsForward makes."""

    def __init__(self, run: str | Path, folder: str | Path, trust_code: bool = False) -> None:
        from danlu.onnx.rows import RowsForward

        folder = Path(folder)
        meta = read_metadata(folder)
        if meta.get("graph") != "rows":
            raise DanluError(
                f"--runtime onnx predicts for runs of rows (tables, images, text, multimodal); {folder}"
                f" holds the export of a '{meta.get('kind')}' run"
            )
        super().__init__(run, trust_code)
        if meta.get("weights_sha256") != weights_hash(self.run):
            raise DanluError(
                f"{folder}: exported from other weights than {self.run.weights} has now (trained again?);"
                f" export again: danlu export {self.run.path} --format onnx {folder} --force"
            )
        self.forward = RowsForward(self.model, self.preprocessor)
        self.session = session(folder / "model.onnx")
        self.output = meta["outputs"][0]["name"]

    def outputs(self, rows: Any, where: str = "input", batch_size: int = 0) -> np.ndarray:
        frame = self.frame(rows)
        outs = [self.session.run([self.output], batch)[0] for batch in self.forward.batches(frame, where)]
        return self.task.decode(torch.from_numpy(np.concatenate(outs)))


def session(path: Path) -> Any:
    """An onnxruntime CPU session with as many threads as PyTorch uses."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise DanluError("onnxruntime is not installed: pip install 'danlu[onnx]'") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3  # errors only: no warnings about unused initializers on stderr
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own errors (a damaged file, an unknown operator)
        raise DanluError(f"{path}: onnxruntime cannot load it: {' '.join(str(e).split())[:300]}") from None


def weights_hash(run: RunDir) -> str:
    """sha256 of the run's weights, recorded at export: an export of other weights is refused."""
    h = hashlib.sha256()
    with open(run.weights, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
