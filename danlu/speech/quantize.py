"""The int8 tier of CTC speech models (`danlu transcribe --dtype int8`): dynamic quantization.

Every nn.Linear of the model (a Wav2Vec2's attention and feed-forward layers, a danlu CTC
run's projections) becomes torch's dynamically quantized Linear: int8 weights with one scale
per output channel, activations quantized per call from their own range, and the products
done by fbgemm's int8 kernels (torch's "x86" engine). Convolutions, recurrent layers and norms
stay float32. CPU only, in memory: the model folder is never written.
"""

from __future__ import annotations

import warnings
from typing import Any

from danlu.errors import DanluError, one_line

SPEECH_DTYPES = ("float32", "int8")
COVERED = "CTC models (Hugging Face Wav2Vec2/HuBERT/WavLM folders and danlu speech_recognition runs)"


def check_dtype(dtype: str | None, kind: str, device: str | None) -> None:
    """A one-line DanluError where `dtype` is not a speech dtype, or int8 for what it does not cover."""
    if dtype is None or dtype == "float32":
        return
    if dtype not in SPEECH_DTYPES:
        raise DanluError(f"unknown --dtype '{dtype}' for speech; valid: {', '.join(SPEECH_DTYPES)}")
    if kind not in ("hf-ctc", "danlu-ctc"):
        raise DanluError(
            f"--dtype int8 covers {COVERED}; this is a '{kind}' model (Whisper: use float32, "
            "faster-whisper folders choose their own compute type)"
        )
    if device is not None and device != "cpu":
        raise DanluError(f"--dtype int8 runs on the CPU only (dynamic quantization); got --device {device}")


def quantize_linear(model: Any) -> Any:
    """`model` with its nn.Linear layers dynamically quantized to int8 (a new module tree;
    the float one is left as it was). A one-line DanluError where this torch has no x86/fbgemm
    quantized engine."""
    import torch

    engines = torch.backends.quantized.supported_engines
    engine = next((e for e in ("x86", "fbgemm") if e in engines), None)
    if engine is None:
        raise DanluError(
            f"--dtype int8 needs torch's x86 or fbgemm quantized engine; this torch has {', '.join(engines)}"
        )
    torch.backends.quantized.engine = engine
    try:
        with warnings.catch_warnings():
            # torch.ao.quantization warns of its deprecation on every call; it still works here
            warnings.simplefilter("ignore")
            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

            return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
    except (RuntimeError, AttributeError, NotImplementedError) as e:
        raise DanluError(f"--dtype int8: dynamic quantization failed on this torch: {one_line(e)}") from None
