"""`la-edge serve`: the HTTP server over the Aligner (FastAPI + uvicorn), with its faces on one port.

`Server` builds one gateway (faces/gateway.py: bodies, workers, streaming, errors, the guard) and
mounts the faces on its app: OpenAI's API at /v1 (openai_api.py), Ollama's at /api (ollama_api.py)
and the chat page at / (faces/web). Requests go through `Aligner.submit` only. On shutdown
(SIGTERM, Ctrl-C) open requests get SHUTDOWN_GRACE_S seconds, then are cancelled (streams end with
finish_reason "stop" and [DONE]); uvicorn cancels what is left a second later. Then the worker
threads are waited for (at most WORKERS_WAIT_S) before the model is freed, so no tokenizer call
runs on a freed model; the process exits with code 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from typing import Optional

import uvicorn

from ..decoding.params import GenerationParams
from ..runtime.aligner import Aligner
from .body import MAX_BODY_BYTES
from .flags import SERVE_REQUEST_TIMEOUT_S
from .gateway import WORKERS_WAIT_S, Gateway
from .ollama_api import mount_ollama
from .openai_api import mount_openai
from .openai_schema import Defaults
from .presets import Steering
from .web import mount_web

__all__ = ["Server", "BackgroundServer", "serve", "SHUTDOWN_GRACE_S"]

SHUTDOWN_GRACE_S = 2.0
log = logging.getLogger("la_edge.server")


class Server:
    """Holds the aligner's gateway and builds the FastAPI app; starts the aligner's engine thread.

    request_timeout: seconds a request that brings no `timeout` may run (None: no deadline).
    web: also serve the chat page (faces/web) at `/`.
    steering: presets (model ids MODEL:NAME), the default principles and `--principle-from system`
    (faces/presets.py); default_ratio: the alignment_ratio of requests that bring none.
    ollama: also serve Ollama's API at /api/ (faces/ollama_api.py).
    """

    def __init__(self, aligner: Aligner, model_name: str, api_key: Optional[str] = None,
                 max_body_bytes: int = MAX_BODY_BYTES, default_max_tokens: int = 256, retry_after_s: int = 1,
                 web: bool = True, request_timeout: Optional[float] = SERVE_REQUEST_TIMEOUT_S,
                 steering: Optional[Steering] = None, default_ratio: Optional[float] = None, ollama: bool = True):
        GenerationParams(max_tokens=default_max_tokens, timeout=request_timeout,
                         ratio=GenerationParams().ratio if default_ratio is None else default_ratio)  # checked once
        steering = steering or Steering(model_name)
        if steering.model != model_name:
            raise ValueError("steering.model must be the server's model_name")
        if aligner.alive:
            aligner.start()
        self.gateway = Gateway(aligner, steering, Defaults(default_max_tokens, request_timeout, default_ratio),
                               api_key, max_body_bytes, retry_after_s)
        self.la, self.steering = aligner, steering
        self.model_name, self.web, self.ollama = model_name, web, ollama
        self.app = self.gateway.app()
        mount_openai(self.app, self.gateway)  # first: its error shape answers paths outside every face
        if ollama:
            mount_ollama(self.app, self.gateway)
        if web:
            mount_web(self.app)

    @property
    def api_key(self) -> Optional[str]:
        """The Bearer key every face requires (None: none); setting it takes effect at the next request."""
        return self.gateway.api_key

    @api_key.setter
    def api_key(self, key: Optional[str]) -> None:
        self.gateway.api_key = key

    def close(self, timeout: float = WORKERS_WAIT_S) -> bool:
        """Cancel the aligner's open requests and wait for the worker threads (the aligner stays open).

        True once no worker calls into the aligner any more; False if one still did after `timeout`.
        """
        return self.gateway.close(timeout)


class _Uvicorn(uvicorn.Server):
    """uvicorn with a bounded shutdown: open requests are cancelled `grace_s` after it starts."""

    def __init__(self, server: "Server", grace_s: float, on_ready=None, **config):
        # uvicorn's own timeout (one second later) cancels what did not end by itself.
        super().__init__(uvicorn.Config(server.app, timeout_graceful_shutdown=int(grace_s) + 1, **config))
        self.la_server, self.grace_s, self.on_ready = server, grace_s, on_ready

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started and self.on_ready is not None:
            self.on_ready()

    async def shutdown(self, sockets=None) -> None:
        asyncio.get_running_loop().call_later(self.grace_s, self.la_server.la.cancel_all)
        await super().shutdown(sockets)


class BackgroundServer:
    """Runs a Server's app with uvicorn in a daemon thread (tests, benchmarks, embedding apps)."""

    def __init__(self, server: "Server", host: str = "127.0.0.1", port: int = 0,
                 grace_s: float = SHUTDOWN_GRACE_S):
        import socket

        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.server = server
        self.base_url = f"http://{host}:{port}"
        self._uv = _Uvicorn(server, grace_s, host=host, port=port, log_level="error")
        self._thread = threading.Thread(target=self._uv.run, name="la-edge-http", daemon=True)
        self._thread.start()
        deadline = time.time() + 30
        while not self._uv.started:
            if time.time() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"server did not start on {self.base_url}")
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop accepting, give open requests the grace period, cancel the rest and wait for the worker
        threads (the aligner stays open); True when nothing calls into the aligner any more."""
        self._uv.should_exit = True
        self._thread.join(timeout=timeout)
        return self.server.close() and not self._thread.is_alive()


def ready_line(server: "Server", base_url: str) -> str:
    """What `la-edge serve` prints once it listens: model, chat template, n_ctx, KV cache, addresses,
    presets, key."""
    la, st = server.la, server.steering
    parts = [f"model {server.model_name} (chat template: {la.template.source}), n_ctx {la.n_ctx}",
             f"API {base_url}/v1" + (f" and {base_url}/api (Ollama)" if server.ollama else ""),
             f"web page {base_url}/" if server.web else "no web page",
             f"presets: {st.describe()}"]
    if la.memory is not None:  # the KV cache it allocated (README, "Memory")
        parts.insert(1, la.memory.describe())
    if st.default.principles:
        parts.append(f"default principle: {st.default.describe()}")
    if st.from_system:
        parts.append("principle from the system message")
    parts.append("API key required" if server.api_key else "no API key required")
    return "la-edge serve: ready: " + "; ".join(parts)


def serve(aligner: Aligner, host: str = "127.0.0.1", port: int = 8080, model_name: str = "la-edge",
          api_key: Optional[str] = None, log_level: str = "warning", grace_s: float = SHUTDOWN_GRACE_S,
          web: bool = True, request_timeout: Optional[float] = SERVE_REQUEST_TIMEOUT_S,
          steering: Optional[Steering] = None, default_ratio: Optional[float] = None, ollama: bool = True) -> None:
    """Serve until SIGTERM or Ctrl-C; open requests then get `grace_s` seconds. Closes the aligner.
    Prints `ready_line` to stdout once it listens.

    In order: uvicorn stops (open requests cancelled after the grace period), the worker threads are
    waited for, then the aligner is closed (engine stopped, model freed). Each wait is bounded.
    """
    main = threading.current_thread() is threading.main_thread()
    closing = threading.Event()

    def exit_cleanly(signum, frame):
        # uvicorn re-raises the signal it caught after its graceful shutdown: leave run() with code 0.
        # A signal while closing is ignored: the close is bounded and must not stop half-way.
        if not closing.is_set():
            raise SystemExit(0)

    signals = (signal.SIGTERM, signal.SIGINT)
    previous = [signal.signal(s, exit_cleanly) for s in signals] if main else []
    server = None
    try:
        server = Server(aligner, model_name=model_name, api_key=api_key, web=web, request_timeout=request_timeout,
                        steering=steering, default_ratio=default_ratio, ollama=ollama)
        shown = f"[{host}]" if ":" in host else host
        ready = lambda: print(ready_line(server, f"http://{shown}:{port}"), flush=True)  # noqa: E731
        _Uvicorn(server, grace_s, host=host, port=port, log_level=log_level, on_ready=ready).run()
    finally:
        closing.set()
        if server is not None and not server.close():
            log.warning("la_edge: worker threads still ran %g s after shutdown; closing the model anyway "
                        "(it is freed only once no call holds it)", WORKERS_WAIT_S)
        aligner.close()
        for s, handler in zip(signals, previous):
            signal.signal(s, handler)
