"""The `danlu serve` command: load every model (a bad one fails before the port is taken),
start uvicorn, print where it listens and what it serves, and on Ctrl-C / SIGTERM stop
accepting, let the requests in flight finish (up to GRACE seconds) and return (exit 0)."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

from danlu.errors import DanluError

GRACE = 30  # seconds in-flight requests get to finish after Ctrl-C / SIGTERM
LOCAL = ("127.0.0.1", "localhost", "::1")


def run(
    models: list[str],
    *,
    names: list[str] | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_batch: int = 64,
    cors: list[str] | None = None,
    body_limit_mb: float = 25,
    timeout: float = 600,
    dtype: str | None = None,
    runtime: str = "auto",
    trust_code: bool = False,
    trust_remote_code: bool = False,
    quiet: bool = False,
    echo: Callable[[str], None] = print,
    warn: Callable[[str], None] = print,
) -> None:
    from danlu.serve.models import load_model, parse_specs

    if max_batch < 1:
        raise DanluError(f"--max-batch must be at least 1, got {max_batch}")
    if not 0 <= port <= 65535:
        raise DanluError(f"--port must be 0-65535, got {port}")
    if body_limit_mb <= 0:
        raise DanluError(f"--body-limit must be positive megabytes, got {body_limit_mb}")
    if not timeout > 0:
        raise DanluError(f"--timeout must be positive seconds, got {timeout}")
    if dtype is not None and dtype not in ("float32", "bfloat16", "int8"):
        raise DanluError(f"unknown --dtype '{dtype}'; valid: bfloat16, float32, int8")
    from danlu.errors import choose_from
    from danlu.onnx.runtime import RUNTIMES

    if runtime not in RUNTIMES:
        raise choose_from(runtime, RUNTIMES, "--runtime")
    specs = parse_specs(models, names or [])
    api_key = api_key or os.environ.get("DANLU_API_KEY") or None
    served = {}
    for name, ref in specs.items():
        if not quiet:
            warn(f"loading {name} ({ref})")
        served[name] = load_model(
            name, ref, trust_code=trust_code, trust_remote_code=trust_remote_code, dtype=dtype,
            runtime=runtime,
        )
        if served[name].runtime and not quiet:
            warn(f"{name}: {served[name].runtime}")
    if host not in LOCAL and not api_key:
        warn(
            f"warning: serving on {host} without an API key: anyone who can reach this machine can use "
            "the models; set --api-key or DANLU_API_KEY"
        )

    import uvicorn

    from danlu.serve.server import create_app

    app = create_app(
        served, api_key=api_key, max_batch=max_batch, cors=cors, body_limit=int(body_limit_mb * 1024 * 1024),
        timeout=timeout,
    )

    def banner(actual_port: int) -> None:
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{actual_port}"
        echo(f"danlu serve: {url}" + (" (API key required)" if api_key else ""))
        for m in served.values():
            echo(f"  {m.name}: {m.kind} model from {m.source}; {', '.join(m.endpoints)}")
        echo("  GET /health, GET /v1/models, GET /v1/models/{model}, GET /metrics")
        echo("Ctrl-C stops the server")

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning" if quiet else "info",
        access_log=not quiet,
        timeout_graceful_shutdown=GRACE,
        lifespan="on",
    )
    server = _server(config, banner)
    import asyncio

    # uvicorn exits (SystemExit) when it cannot bind, after logging why
    with _stop_on_signals(server), contextlib.suppress(SystemExit):
        asyncio.run(server.serve())
    if not server.started:
        raise DanluError(f"could not start serving on {host}:{port} (is the port in use? see the log above)")


def _server(config: Any, banner: Callable[[int], None]) -> Any:
    """uvicorn's Server, printing the banner once the socket is bound (the real port, also
    for --port 0), and leaving signals to `_stop_on_signals`."""
    import uvicorn

    class Server(uvicorn.Server):
        def install_signal_handlers(self) -> None:  # older uvicorn
            pass

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # newer uvicorn: it would re-raise them at the end
            yield

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started and not self.should_exit:
                bound = [s.getsockname()[1] for srv in self.servers for s in srv.sockets]
                banner(bound[0] if bound else config.port)

    return Server(config)


@contextlib.contextmanager
def _stop_on_signals(server: Any) -> Iterator[None]:
    """Ctrl-C or SIGTERM: a graceful stop (no new connections, requests in flight finish);
    a second one: stop now."""

    def stop(signum: int, frame: Any) -> None:
        if server.should_exit:
            server.force_exit = True
        server.should_exit = True

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
