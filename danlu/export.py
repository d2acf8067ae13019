"""`danlu export RUN --format hf|onnx OUT`: a trained run folder -> a Hugging Face folder,
or an ONNX model with its metadata (danlu/onnx/export.py).

A language-model (GPT) run becomes a GPT-2 folder (GPT2LMHeadModel + AutoTokenizer;
danlu/lm/export.py); a pretrained_encoder run becomes an AutoModelForSequenceClassification
folder. Application code over a run folder, so it sits above models/ and predict.py (which
it uses).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from danlu.errors import DanluError
from danlu.models.pretrained import PretrainedEncoder, base_folder
from danlu.predict import Predictor
from danlu.run import RunDir


def export_run(
    run_dir: str | Path,
    out_dir: str | Path,
    format: str = "hf",
    trust_code: bool = False,
    force: bool = False,
    adapter_only: bool = False,
) -> Path:
    """hf: write a language-model run as a Hugging Face GPT-2 folder (config.json,
    model.safetensors, tokenizer files) that GPT2LMHeadModel and AutoTokenizer load.
    onnx: model.onnx and metadata.json, parity checked (danlu/onnx/export.py); force: replace
    an earlier ONNX export in OUT. adapter_only: a causal_lm LoRA run's adapter as a peft folder.
    trust_code: a pretrained_encoder run may name user code (e.g. its task.loss)."""
    if format not in ("hf", "onnx"):
        raise DanluError(
            f"unknown export format '{format}'; supported: hf (language-model and pretrained_encoder"
            " runs), onnx (any run of tables, images, text, multimodal rows, GPT or CTC speech)"
        )
    if format == "onnx":
        from danlu.onnx.export import export_onnx

        return export_onnx(run_dir, out_dir, force=force, trust_code=trust_code)
    run_path, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DanluError(f"'{out_dir}' already exists and is not empty; choose a new folder")
    if not (run_path / "model.json").is_file() and (run_path / "config.json").is_file():
        raise DanluError(f"'{run_path}' is already a Hugging Face folder; export takes a danlu run folder")
    run = RunDir.open(run_path)
    model_type = (run.read_model_json().get("model") or {}).get("type")
    if model_type == "causal_lm":  # a Llama-family folder, or its LoRA adapter (danlu/lm/llama_export.py)
        from danlu.lm.llama_export import export_llama_run

        return export_llama_run(run_path, out_dir, adapter_only)
    if adapter_only:
        raise DanluError(
            f"--adapter-only exports the LoRA adapter of a causal_lm run; '{run_path}' is not one"
        )
    if model_type == "pretrained_encoder":
        return export_encoder(run_path, out_dir, trust_code)  # an AutoModelForSequenceClassification folder
    from danlu.lm.export import export_lm_run

    return export_lm_run(run_path, out_dir)


def export_encoder(run_dir: str | Path, out_dir: str | Path, trust_code: bool = False) -> Path:
    """`danlu export RUN --format hf OUT` for a pretrained_encoder run. The folder is built
    beside OUT and renamed into place, so OUT is never half written."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DanluError(f"'{out_dir}' already exists and is not empty; choose a new folder")
    run = RunDir.open(run_dir)
    predictor = Predictor(run, trust_code)
    model = predictor.model
    assert isinstance(model, PretrainedEncoder)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.export_hf(tmp, base_folder(predictor.schema.pretrained or {}), run.tokenizer)
        tmp.replace(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
