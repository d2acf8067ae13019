"""danlu (丹炉): one YAML file from data to a trained, evaluated, reloadable model.

    import danlu
    run = danlu.train("examples/tutorial.yaml", train__lr=0.01)
    run.evaluate()
    danlu.load(run.path).predict(frame)

Imports are lazy so that `import danlu` and `danlu --help` stay fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["DanluError", "Run", "__version__", "evaluate", "load", "train"]


def __getattr__(name: str) -> Any:
    if name in ("train", "evaluate", "Run"):
        from danlu import api

        return getattr(api, name)
    if name == "load":
        from danlu.predict import load

        return load
    if name == "DanluError":
        from danlu.errors import DanluError

        return DanluError
    raise AttributeError(f"module 'danlu' has no attribute '{name}'")
