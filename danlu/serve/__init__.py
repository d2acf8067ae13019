"""`danlu serve`: trained models behind an HTTP API that existing clients already speak.

    server.py    the ASGI app: routes, the guard (API key, body limit, metrics), /health, /v1/models
    models.py    model references -> served models (rows, text, speech) through danlu's loaders
    protocol.py  the OpenAI-shaped request bodies (pydantic), and parsing them into 400s
    errors.py    OpenAI's error shape on every route
    rows.py      POST /v1/predict/{model}: JSON rows -> labels, probabilities, values
    batching.py  micro-batching of predict requests (one forward for many requests)
    text.py      /v1/completions and /v1/chat/completions (server-sent events when streaming)
    audio.py     /v1/audio/transcriptions
    metrics.py   /metrics (Prometheus)
    command.py   the `danlu serve` command: load, print, run uvicorn, stop cleanly

Importing this package imports nothing heavy; FastAPI and the models load when serving.

    import danlu.serve
    asgi = danlu.serve.app(["runs/tutorial-20261124-101500", "path/to/gpt2"])  # uvicorn, mount, ...
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def app(
    models: list[str] | Mapping[str, Any],
    *,
    api_key: str | None = None,
    max_batch: int = 64,
    cors: list[str] | None = None,
    body_limit: int | None = None,
    timeout: float | None = 600,
    trust_code: bool = False,
    trust_remote_code: bool = False,
    dtype: str | None = None,
    runtime: str = "auto",
) -> Any:
    """An ASGI app (FastAPI) serving `models`: a list of model references (each named after its
    folder) or a mapping name -> reference. trust_code / trust_remote_code: as the CLI's
    --trust-code / --trust-remote-code, only for folders you trust. runtime: rows models'
    torch, onnx or auto (as `danlu predict --runtime`)."""
    from danlu.serve.models import Served, load_model, parse_specs
    from danlu.serve.server import BODY_LIMIT, create_app

    specs = dict(models) if isinstance(models, Mapping) else parse_specs(list(models), [])
    served = {
        name: ref if isinstance(ref, Served) else load_model(
            name, str(ref), trust_code=trust_code, trust_remote_code=trust_remote_code, dtype=dtype,
            runtime=runtime,
        )
        for name, ref in specs.items()
    }
    return create_app(
        served, api_key=api_key, max_batch=max_batch, cors=cors, body_limit=body_limit or BODY_LIMIT,
        timeout=timeout,
    )
