"""danlu (丹炉): one YAML file from data to a trained, evaluated, reloadable model.

    import danlu
    run = danlu.train("examples/tutorial.yaml", train__lr=0.01)
    run.evaluate()
    danlu.load(run.path).predict(frame)         # runtime="onnx": its ONNX export in onnxruntime
    danlu.generate("runs/shakespeare-20261124-101500", "ROMEO:", max_new_tokens=50)
    for piece in danlu.generate_stream("path/to/gpt2", "Hello", temperature=0.8): ...
    danlu.transcribe("path/to/whisper-or-wav2vec2", "talk.wav", timestamps="word").text

Imports are lazy so that `import danlu` and `danlu --help` stay fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = [
    "DanluError",
    "Run",
    "__version__",
    "evaluate",
    "generate",
    "generate_stream",
    "load",
    "train",
    "transcribe",
    "tune",
]


def __getattr__(name: str) -> Any:
    if name in ("train", "evaluate", "Run"):
        from danlu import api

        return getattr(api, name)
    if name == "load":
        from danlu.onnx.runtime import load_predictor

        return load_predictor
    if name in ("generate", "generate_stream"):
        from danlu.lm import complete

        return complete.generate if name == "generate" else complete.generate_stream
    if name == "transcribe":
        from danlu.speech.transcribe import transcribe

        return transcribe
    if name == "tune":
        from danlu.tuning import tune

        return tune
    if name == "DanluError":
        from danlu.errors import DanluError

        return DanluError
    raise AttributeError(f"module 'danlu' has no attribute '{name}'")
