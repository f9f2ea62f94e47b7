"""`la-edge serve`: an OpenAI-compatible HTTP face over the Aligner (FastAPI + uvicorn).

Alignment fields are request extensions: `principle`, `alignment_ratio`, `plausibility_top_p`,
`plausibility_temperature` (plus `top_k`, `min_p`, `repeat_penalty`, `ignore_eos`), and for several
principles `principles`, `avoid`, `ratio_schedule` (faces/principles.py), and `principle_from`, usable via
`extra_body`. A request that names no principle gets one from the `Steering` (faces/presets.py): the system
message, the preset its `model` names (`MODEL:NAME`), or the server's default. Requests go through
`Aligner.submit` only; openai_schema.py reads them and openai_wire.py writes the answers; ollama_api.py
rewrites Ollama's bodies into the same requests (`Server.start`). Under hostile or departing clients:

- a non-streaming request is cancelled when its client disconnects (checked every
  DISCONNECT_POLL_S); a stream is cancelled at the next token after its client left;
- a stopped or failed engine answers 503 at once, and /health reports it (503, with the failure);
- every 5xx carries `Connection: close`;
- a request past its deadline (its `timeout`, else the server's request_timeout) gets 504, or an
  error event in a stream;
- on shutdown (SIGTERM, Ctrl-C) open requests get SHUTDOWN_GRACE_S seconds, then are cancelled
  (streams end with finish_reason "stop" and [DONE]); uvicorn cancels what is left a second later.
  Then the worker threads are waited for (at most WORKERS_WAIT_S) before the model is freed, so
  no tokenizer call runs on a freed model; the process exits with code 0.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import signal
import threading
import time
import uuid
from typing import Optional

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..decoding.params import GenerationParams
from ..errors import EngineUnavailableError
from ..runtime.aligner import Aligner
from .flags import SERVE_REQUEST_TIMEOUT_S
from .openai_schema import MAX_BODY_BYTES, ChatRequest, CompletionRequest, Defaults, RequestError, parse
from .openai_wire import Wire, error, failure, stream_error
from .presets import Steering
from .web import mount_web

__all__ = ["Server", "BackgroundServer", "serve", "SHUTDOWN_GRACE_S"]

DISCONNECT_POLL_S = 0.1
SHUTDOWN_GRACE_S = 2.0
WORKER_THREADS = 64  # blocking waits on the engine (one per open request) run in these
WORKERS_WAIT_S = 10.0  # close(): how long the worker threads may take to finish once requests are cancelled
log = logging.getLogger("la_edge.server")


class _Workers:
    """The thread pool of blocking calls into the aligner; `close` waits (bounded) until none runs."""

    def __init__(self, n: int):
        self._pool = concurrent.futures.ThreadPoolExecutor(n, thread_name_prefix="la-edge-wait")
        self._busy = 0  # calls submitted and not yet finished or cancelled
        self._idle = threading.Condition()

    def run(self, fn, *args) -> asyncio.Future:
        with self._idle:
            self._busy += 1
        try:
            fut = self._pool.submit(fn, *args)  # raises once closed
        except BaseException:
            self._finished(None)
            raise
        fut.add_done_callback(self._finished)
        return asyncio.wrap_future(fut)

    def _finished(self, _fut) -> None:
        with self._idle:
            self._busy -= 1
            self._idle.notify_all()

    def close(self, timeout: float) -> bool:
        """Refuse new calls, drop queued ones; True once no call runs (False after `timeout` seconds)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)


class Server:
    """Holds the aligner and builds the FastAPI app; starts the aligner's engine thread.

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
        self.la = aligner
        self.model_name = model_name
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        GenerationParams(max_tokens=default_max_tokens, timeout=request_timeout,
                         ratio=GenerationParams().ratio if default_ratio is None else default_ratio)  # checked once
        self.defaults = Defaults(default_max_tokens, request_timeout, default_ratio)
        self.steering = steering or Steering(model_name)
        if self.steering.model != model_name:
            raise ValueError("steering.model must be the server's model_name")
        self.retry_after_s = retry_after_s
        self._workers = _Workers(WORKER_THREADS)
        if aligner.alive:
            aligner.start()
        self.web, self.ollama = web, ollama
        self.app = self._build()
        if ollama:
            from .ollama_api import mount_ollama

            mount_ollama(self.app, self)
        if web:
            mount_web(self.app)

    def close(self, timeout: float = WORKERS_WAIT_S) -> bool:
        """Cancel the aligner's open requests and wait for the worker threads (the aligner stays open).

        True once no worker calls into the aligner any more; False if one still did after `timeout`.
        """
        self.la.cancel_all()
        idle = self._workers.close(timeout)
        self.la.cancel_all()  # what a worker submitted meanwhile (its client is gone)
        return idle

    # ---- request plumbing ------------------------------------------------------------------
    def _run(self, fn, *args) -> asyncio.Future:
        return self._workers.run(fn, *args)

    async def read_body(self, http: Request) -> bytes:
        """The raw body, at most max_body_bytes (413 beyond)."""
        too_big = RequestError(f"request body exceeds {self.max_body_bytes} bytes", status=413, code="body_too_large")
        declared = http.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            raise too_big
        parts, size = [], 0
        async for part in http.stream():
            size += len(part)
            if size > self.max_body_bytes:
                raise too_big
            parts.append(part)
        return b"".join(parts)

    async def _submit(self, start):
        fut = self._run(start, self.la)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:  # the client left while the prompt was tokenized
            fut.add_done_callback(_cancel_submitted)
            raise

    def answered_model(self, requested: Optional[str]) -> str:
        """The model id an answer names: the requested one when it is one of ours (a preset), else the model."""
        return requested if requested in self.steering.ids() else self.model_name

    def check_alive(self) -> None:
        """Raise EngineUnavailableError (503) once the engine stopped or failed."""
        if not self.la.alive:
            failed = self.la.status()["failure"]
            raise EngineUnavailableError(f"engine failed: {failed}" if failed else "engine stopped")

    async def start(self, req):
        """Submit a parsed ChatRequest or CompletionRequest (its principles chosen by the steering):
        the running la_edge Request. Every face (OpenAI, Ollama) comes through here."""
        params = req.params(self.defaults)
        return await self._submit(req.submitter(params, self.la.max_branches, self.steering))

    async def _handle(self, http: Request, model_cls, chat: bool):
        try:
            self.check_alive()
        except EngineUnavailableError as exc:
            return failure(exc)
        try:
            req = parse(await self.read_body(http), model_cls)
            request = await self.start(req)
        except ClientDisconnect:  # gone while sending the body
            return error(499, "client closed the request", code="client_closed")
        except Exception as exc:
            return failure(exc, self.retry_after_s)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        wire = Wire(self.la, {"id": rid, "created": int(time.time()), "model": self.answered_model(req.model)}, chat,
                    req.want_logprobs)
        if req.stream:
            return EventStream(request, self._events(request, wire, req.include_usage))
        return await self._complete(http, request, wire)

    async def _complete(self, http: Request, request, wire: Wire):
        try:
            result = await self.finish(http, request)
        except ClientDisconnect:
            return error(499, "client closed the request", code="client_closed")
        except Exception as exc:
            return failure(exc, self.retry_after_s)
        return JSONResponse(wire.result(result))

    async def finish(self, http: Request, request):
        """The GenerationResult of a non-streaming request; ClientDisconnect (and the request
        cancelled) once its client left."""
        fut = self._run(request.result)
        try:
            while not fut.done():
                await asyncio.wait({fut}, timeout=DISCONNECT_POLL_S)
                if not fut.done() and await http.is_disconnected():
                    request.cancel()  # nobody will read the answer: stop generating it
                    raise ClientDisconnect()
            return fut.result()
        finally:
            if not fut.done():  # cancelled (shutdown) while waiting
                request.cancel()
                fut.add_done_callback(_consume)

    async def chunks(self, request):
        """The request's Chunks, read in a worker thread; an engine error is raised here."""
        it = request.stream()
        while True:
            chunk = await self._run(next, it, None)
            if chunk is None:
                return
            yield chunk

    async def _events(self, request, wire: Wire, include_usage: bool):
        try:
            if wire.chat:
                yield wire.role()
            try:
                async for chunk in self.chunks(request):
                    yield wire.chunk(chunk)
            except Exception as exc:
                yield stream_error(exc)
            if include_usage:
                yield wire.usage_event(request.usage)
            yield "data: [DONE]\n\n"
        finally:
            request.cancel()  # a client that went away frees both sequences at once

    # ---- endpoints -----------------------------------------------------------------------
    def _build(self) -> FastAPI:
        app = FastAPI(title="la_edge", docs_url=None, redoc_url=None, openapi_url=None)
        app.add_middleware(_Guard, server=self)

        @app.exception_handler(Exception)
        async def internal(request: Request, exc: Exception):  # never a stack trace to the client
            return failure(exc)

        @app.exception_handler(StarletteHTTPException)
        async def http_error(request: Request, exc: StarletteHTTPException):
            if request.url.path.startswith("/api/"):  # Ollama's error shape
                return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)
            kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
            return error(exc.status_code, str(exc.detail), type_=kind)

        @app.get("/health")
        async def health():
            s = self.la.status()
            body = {"status": "ok" if s["alive"] else "unavailable", "model": self.model_name,
                    "active": s["active"], "queued": s["queued"], "sampler": s["sampler"], "failure": s["failure"],
                    "prompt_cache": s["prompt_cache"], "kv": s["kv"]}
            return JSONResponse(body, status_code=200 if s["alive"] else 503)

        @app.get("/v1/models")
        async def models():
            return {"object": "list", "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "la_edge"} for name in self.steering.ids()]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            return await self._handle(request, ChatRequest, chat=True)

        @app.post("/v1/completions")
        async def completions(request: Request):
            return await self._handle(request, CompletionRequest, chat=False)

        return app


def _cancel_submitted(fut: asyncio.Future) -> None:
    if not fut.cancelled() and fut.exception() is None:
        fut.result().cancel()


def _consume(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()  # retrieved: no "exception was never retrieved" noise


class EventStream(StreamingResponse):
    """A streamed response (SSE, or Ollama's NDJSON) that always ends its request, also when the client
    left before the first event."""

    def __init__(self, request, events, media_type: str = "text/event-stream"):
        super().__init__(events, media_type=media_type, headers={"Cache-Control": "no-cache"})
        self.request = request

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()
            self.request.cancel()


class _Guard:
    """Pure ASGI middleware: 401 on /v1/ routes without the right Bearer key; `Connection: close` on 5xx;
    a request that uvicorn cancels at shutdown gets 503 (if nothing was sent yet) instead of a traceback."""

    def __init__(self, app, server: "Server"):
        self.app, self.server = app, server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        key = self.server.api_key
        if key and scope["path"].startswith(("/v1/", "/api/")):
            headers = dict(scope.get("headers") or [])
            if headers.get(b"authorization", b"").decode("latin-1") != f"Bearer {key}":
                message = "invalid or missing API key"
                response = (JSONResponse({"error": message}, status_code=401) if scope["path"].startswith("/api/")
                            else error(401, message, type_="authentication_error", code="invalid_api_key"))
                await response(scope, receive, send)
                return

        started = False

        async def send_closing_on_5xx(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if message["status"] >= 500:
                    kept = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                    message = {**message, "headers": kept + [(b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, receive, send_closing_on_5xx)
        except asyncio.CancelledError:  # outlived the graceful shutdown; the request was cancelled too
            if not started:
                await error(503, "the server is shutting down", type_="server_error",
                            code="shutting_down")(scope, receive, send)


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
    parts = [f"model {server.model_name} (chat template: {la.template.source}), n_ctx {la.backend.n_ctx}",
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
