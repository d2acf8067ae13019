"""The ASGI app: routes, the guard (API key, body limit, metrics) and the error shape.

    GET  /health                      open even with an API key
    GET  /v1/models                   OpenAI's list shape
    GET  /v1/models/{model}           the model object + its inputs (rows), context (text)
    POST /v1/predict/{model}          rows models (danlu/serve/rows.py): JSON, CSV, Parquet, image uploads
    POST /v1/completions              language models (danlu/serve/text.py)
    POST /v1/chat/completions
    POST /v1/audio/transcriptions     speech models (danlu/serve/audio.py)
    POST /v1/recommend/{model}        recommendation runs: users' (or a new user's) top k items
    GET  /metrics                     Prometheus (danlu/serve/metrics.py)
    GET  /                            the playground (static/index.html, playground.js)

With an API key every route but /health and the playground's files needs
`Authorization: Bearer KEY` (compared in constant time). A body over the limit (default
25 MB, OpenAI's audio limit) is refused with a 413 before it is read whole.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from danlu.serve import errors
from danlu.serve.batching import MicroBatcher
from danlu.serve.errors import APIError
from danlu.serve.metrics import Metrics
from danlu.serve.models import Served
from danlu.serve.protocol import ChatRequest, CompletionRequest, PredictRequest, RecommendRequest, parse

BODY_LIMIT = 25 * 1024 * 1024
TIMEOUT = 600.0  # seconds a request may run (--timeout); None: no limit
# open even with an API key: the health check, and the playground page (it asks for the key)
OPEN_PATHS = ("/health", "/", "/playground.js")
STATIC = Path(__file__).resolve().parent / "static"


class Guard:
    """Pure ASGI middleware (streams pass through untouched): the key, the body limit, the
    per-request timeout, and the request counter and latency of every request, by route
    template. A request still running at the timeout is cancelled (its decoding stops at the
    next token, as when its client leaves): a 504 when nothing was sent yet, else a last SSE
    event with the error."""

    def __init__(
        self, app: Any, api_key: str | None, body_limit: int, metrics: Metrics, timeout: float | None = None
    ) -> None:
        self.app, self.key, self.limit, self.metrics = app, api_key, body_limit, metrics
        self.timeout = timeout

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status, started, stream = time.perf_counter(), [500], [False], [False]

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0], started[0] = message["status"], True
                stream[0] = any(k.lower() == b"content-type" and v.startswith(b"text/event-stream")
                                for k, v in message.get("headers", []))
            await send(message)

        try:
            refusal = self._refuse(scope)
            if refusal is None and scope["method"] in ("POST", "PUT", "PATCH"):
                receive, refusal = await self._limited(scope, receive)
            if refusal is not None:
                await refusal(scope, receive, sending)
            else:
                try:
                    async with asyncio.timeout(self.timeout):
                        await self.app(scope, receive, sending)
                except TimeoutError:
                    message = f"the request ran past the server's --timeout of {self.timeout:g} s"
                    if not started[0]:
                        await errors.response(504, message, code="timeout")(scope, receive, sending)
                    else:
                        status[0] = 504
                        end = errors.body(504, message, code="timeout") if stream[0] else None
                        chunk = f"data: {json.dumps(end)}\n\n".encode() if end else b""
                        await send({"type": "http.response.body", "body": chunk, "more_body": False})
        finally:
            route = scope.get("route")
            self.metrics.observe(getattr(route, "path", "unmatched"), status[0], time.perf_counter() - start)

    def _refuse(self, scope: dict[str, Any]) -> Response | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.key and scope["path"] not in OPEN_PATHS and scope["method"] != "OPTIONS":
            given = headers.get("authorization", "")
            scheme, _, token = given.partition(" ")
            right = hmac.compare_digest(token.strip().encode(), self.key.encode())
            if scheme.lower() != "bearer" or not right:
                what = "a wrong API key" if given else "no API key"
                return errors.response(
                    401, f"{what}: send the header 'Authorization: Bearer KEY'", code="invalid_api_key"
                )
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return errors.response(400, f"bad Content-Length header {length!r}")
            if int(length) > self.limit:
                return self._too_big()
        return None

    def _too_big(self) -> Response:
        mb = self.limit / 1024 / 1024
        return errors.response(413, f"the request body is over the server's limit of {mb:g} MB",
                               code="request_too_large")

    async def _limited(self, scope: dict[str, Any], receive: Any) -> tuple[Any, Response | None]:
        """A body without Content-Length (chunked) is read here up to the limit, then replayed."""
        if any(k.lower() == b"content-length" for k, _ in scope["headers"]):
            return receive, None
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > self.limit:
                return receive, self._too_big()
            if message["type"] != "http.request" or not message.get("more_body"):
                break

        async def replay() -> dict[str, Any]:
            return messages.pop(0) if messages else await receive()

        return replay, None


def create_app(
    models: Mapping[str, Served],
    *,
    api_key: str | None = None,
    max_batch: int = 64,
    cors: list[str] | None = None,
    body_limit: int = BODY_LIMIT,
    timeout: float | None = TIMEOUT,
) -> FastAPI:
    metrics = Metrics()
    batchers: dict[str, MicroBatcher] = {}
    for name, served in models.items():
        if served.kind == "rows":
            from danlu.serve.rows import predict_rows

            batchers[name] = MicroBatcher(
                lambda items, s=served: predict_rows(s, items), len, served.worker, max_rows=max_batch
            )
            metrics.watch_queue(name, lambda b=batchers[name]: b.depth)
        elif served.kind == "text":  # the continuous batch of danlu's GPT (danlu/serve/text.py)
            served.max_rows = min(max_batch, 16)  # danlu's CPU kernels step up to 16 rows
            served.on_step = metrics.decode_rows.labels(name).observe

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        for b in batchers.values():
            await b.close()
        for served in models.values():
            served.worker.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="danlu", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    errors.install(app)
    app.add_middleware(Guard, api_key=api_key, body_limit=body_limit, metrics=metrics, timeout=timeout)
    if cors:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cors, allow_methods=["*"], allow_headers=["*"])
    app.state.models = models
    app.state.batchers = batchers

    def get(name: str, kind: str, param: str = "model") -> Served:
        served = models.get(name)
        if served is None:
            known = ", ".join(models) or "none"
            raise APIError(404, f"the model '{name}' does not exist; served: {known}", param=param,
                           code="model_not_found")
        if served.kind != kind:
            raise APIError(400, f"'{name}' is a {served.kind} model; it serves {', '.join(served.endpoints)}",
                           param=param)
        return served

    def count(model: str, n: int) -> None:
        metrics.count_tokens(model, n)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": list(models)}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [m.card() for m in models.values()]}

    @app.get("/v1/models/{model:path}")
    async def model_card(model: str) -> dict[str, Any]:
        served = models.get(model)
        if served is None:
            get(model, "", param="model")
        assert served is not None
        card = served.card()
        if served.kind == "rows":
            from danlu.serve.rows import schema_card

            card.update(schema_card(served))
        elif served.kind == "text":
            card["context_length"] = served.model.block_size
        elif served.kind == "speech":
            card["sample_rate"] = served.model.sample_rate
        else:  # recommend
            card.update(users=served.model.index.n_users, items=served.model.index.n_items)
        return card

    @app.post("/v1/predict/{model:path}")
    async def predict(model: str, request: Request) -> dict[str, Any]:
        from danlu.serve.rows import TABLE_TYPES, table_rows, write_images

        served = get(model, "rows")
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        with tempfile.TemporaryDirectory(prefix="danlu-serve-") as tmp:
            if media == "multipart/form-data":
                rows = await uploaded_images(served, request, Path(tmp))
            else:
                if media in TABLE_TYPES:
                    rows = table_rows(await request.body(), media)
                else:
                    rows = (await parse(request, PredictRequest)).rows
                rows = write_images(served, rows, Path(tmp))
            answers = await batchers[model].submit(rows)
        return {"object": "list", "model": model, "predictions": answers}

    async def uploaded_images(served: Served, request: Request, folder: Path) -> list[dict[str, Any]]:
        """A multipart upload of image files -> one row per file, for a model whose only input
        is one image."""
        from danlu.serve.models import image_fields

        fields = image_fields(served)
        if len(fields) != 1 or len(served.inputs or []) != 1:
            raise APIError(400, f"'{served.name}' takes more than one image: send JSON rows with images in"
                           " base64", param="file")
        rows = []
        async with request.form(max_files=256, max_fields=16) as form:
            for i, (_, upload) in enumerate(form.multi_items()):
                if isinstance(upload, str):
                    continue
                path = folder / f"upload-{i}"
                path.write_bytes(await upload.read())
                rows.append({fields[0]: str(path)})
        if not rows:
            raise APIError(400, "no image file in the upload", param="file")
        return rows

    @app.post("/v1/recommend/{model:path}")
    async def recommend(model: str, request: Request) -> dict[str, Any]:
        served = get(model, "recommend")
        req = await parse(request, RecommendRequest)
        if (req.users is None) == (req.liked is None):
            raise APIError(400, "give 'users' (known user ids) or 'liked' (a new user's items), not both",
                           param="users")
        rec = served.model
        if req.liked is not None:
            call = partial(rec.recommend_liked, [str(i) for i in req.liked], req.k, req.include_seen)
        else:
            call = partial(rec.recommend, [str(u) for u in req.users or []], req.k, req.include_seen)
        frame = await asyncio.get_running_loop().run_in_executor(served.worker, call)
        data = [
            {"user": str(user), "items": rows.drop(columns="user").to_dict("records")}
            for user, rows in frame.groupby("user", sort=False)
        ]
        return {"object": "list", "model": model, "k": req.k, "data": data}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        from danlu.serve import text

        req = await parse(request, CompletionRequest)
        out = await text.completions(get(req.model, "text"), req, count)
        return out if not isinstance(out, dict) else JSONResponse(out)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        from danlu.serve import text

        req = await parse(request, ChatRequest)
        out = await text.chat(get(req.model, "text"), req, count)
        return out if not isinstance(out, dict) else JSONResponse(out)

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Any:
        from danlu.serve import audio

        async with request.form(max_files=1, max_fields=32) as form:
            name = form.get("model")
            if not isinstance(name, str) or not name:
                raise APIError(400, "'model' is required: the name of a speech model", param="model")
            content, media = await audio.handle(get(name, "speech"), form)
        if isinstance(content, dict):
            return JSONResponse(content)
        return Response(content, media_type=media)

    @app.get("/")
    async def playground() -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    @app.get("/playground.js")
    async def playground_js() -> Response:
        return FileResponse(STATIC / "playground.js", media_type="text/javascript; charset=utf-8")

    @app.get("/metrics")
    async def prometheus() -> Response:
        data, media = metrics.render()
        return Response(data, media_type=media)

    return app
