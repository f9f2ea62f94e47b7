"""What every HTTP face shares (OpenAI's /v1, Ollama's /api): one path of a request through the server.

A face reads its body here (`Gateway.body`, see body.py), rewrites it into la_edge's request model
(openai_schema: `Gateway.request`) and starts it (`Gateway.start`); `Gateway.answer` then writes the
answer with the face's `Answer`: a stream (OpenAI's SSE events, Ollama's NDJSON lines) or one JSON
object. Errors map to HTTP statuses in `failure_of` only; each face writes them in its own shape
(`Gateway.face`). Under hostile or departing clients:

- a non-streaming request is cancelled when its client disconnects (checked every
  DISCONNECT_POLL_S); a stream is cancelled at the next token after its client left;
- a stopped or failed engine answers 503 at once, and /health reports it (503, with the failure);
- every 5xx carries `Connection: close`, and an exception no route caught is a 500 in the face's
  shape, never a stack trace (both in `_Guard`, the one place);
- blocking calls into the aligner (submitting, waiting for tokens, vocabulary look-ups) run in
  WORKER_THREADS worker threads, never on the event loop; `close` cancels the open requests and
  waits for the workers, at most WORKERS_WAIT_S.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from typing import Any, Callable, Dict, Iterable, NamedTuple, Optional, Protocol, Tuple

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..errors import (BusyError, ChatTemplateError, ContextOverflowError, EngineUnavailableError,
                      InvalidParameterError, LaEdgeError, RequestTimeoutError, StepFailedError)
from .body import MAX_BODY_BYTES, RequestError, load_body, read_body
from .openai_schema import ChatRequest, CompletionRequest, Defaults, validate
from .presets import Steering, UnknownModelError
from .tokens import TokenBytes

__all__ = ["Answer", "EventStream", "Failure", "Gateway", "failure_of", "finish_reason"]

DISCONNECT_POLL_S = 0.1
WORKER_THREADS = 64  # blocking waits on the engine (one per open request) run in these
WORKERS_WAIT_S = 10.0  # close(): how long the worker threads may take to finish once requests are cancelled
log = logging.getLogger("la_edge.server")


# ---- errors ----------------------------------------------------------------------------------
class Failure(NamedTuple):
    """An error as HTTP answers it: status, message, OpenAI's error type, code, param and extra headers."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: Optional[str] = None
    param: Optional[str] = None
    headers: Optional[Dict[str, str]] = None


def failure_of(exc: BaseException, retry_after_s: int = 1) -> Failure:
    """The one mapping of exceptions to HTTP statuses (every face writes the Failure in its own shape)."""
    if isinstance(exc, RequestError):
        return Failure(exc.status, str(exc), code=exc.code, param=exc.param)
    if isinstance(exc, ClientDisconnect):
        return Failure(499, "client closed the request", code="client_closed")
    if isinstance(exc, StarletteHTTPException):  # no such route or method
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        return Failure(exc.status_code, str(exc.detail), kind)
    if isinstance(exc, BusyError):
        return Failure(429, f"{exc}; retry later", "rate_limit_error", "busy",
                       headers={"Retry-After": str(retry_after_s)})
    if isinstance(exc, UnknownModelError):
        return Failure(404, str(exc), code="model_not_found", param="model")
    if isinstance(exc, ContextOverflowError):
        return Failure(400, str(exc), code="context_length_exceeded", param="max_tokens")
    if isinstance(exc, (InvalidParameterError, ChatTemplateError)):
        return Failure(400, str(exc), code="invalid_value")
    if isinstance(exc, RequestTimeoutError):
        return Failure(504, str(exc), "server_error", "request_timeout")
    if isinstance(exc, EngineUnavailableError):
        return Failure(503, f"{exc}; the server cannot generate", "server_error", "engine_unavailable")
    if isinstance(exc, StepFailedError):
        return Failure(500, f"generation failed: {exc}", "server_error", "step_failed")
    if isinstance(exc, LaEdgeError):
        return Failure(500, str(exc), "server_error", type(exc).__name__)
    log.error("internal error", exc_info=exc)
    return Failure(500, "internal error", "server_error")


def finish_reason(reason: Optional[str]) -> Optional[str]:
    """The finish reason an answer reports: a cancelled or failed request ends with "stop"."""
    return {"cancelled": "stop", "error": "stop"}.get(reason, reason)


# ---- answers ---------------------------------------------------------------------------------
class Answer(Protocol):
    """How a face writes one request's answer: parts of a `media_type` stream, or one JSON object."""

    media_type: str
    logprobs: bool  # whether it shows logprobs (their tokens' bytes are then learned off the event loop)

    def opening(self) -> Iterable[str]:
        """What a stream sends before the first chunk."""

    def chunk(self, c) -> Optional[str]:
        """A streamed Chunk's part; None sends nothing."""

    def failed(self, exc: Exception) -> str:
        """The part that ends a stream that already answered 200 with an error."""

    def closing(self, request, failed: bool) -> Iterable[str]:
        """What a stream sends after its last chunk (or after `failed`'s part)."""

    def whole(self, request, result) -> Dict[str, Any]:
        """The non-streaming body of a GenerationResult."""


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


# ---- the gateway -----------------------------------------------------------------------------
class Gateway:
    """The aligner, its steering and defaults, the worker threads and the faces' error shapes.

    steering: presets, default principles and `--principle-from system` (faces/presets.py);
    defaults: what a request leaves out; api_key: required under every face's prefix when set.
    """

    def __init__(self, la, steering: Steering, defaults: Defaults = Defaults(), api_key: Optional[str] = None,
                 max_body_bytes: int = MAX_BODY_BYTES, retry_after_s: int = 1):
        self.la, self.steering, self.defaults = la, steering, defaults
        self.api_key, self.max_body_bytes, self.retry_after_s = api_key, max_body_bytes, retry_after_s
        self.token_bytes = TokenBytes(la)
        self._faces: Dict[str, Callable[[Failure], Response]] = {}
        self._workers = _Workers(WORKER_THREADS)

    # ---- faces and their errors --------------------------------------------------------------
    def face(self, prefix: str, shape: Callable[[Failure], Response]) -> None:
        """A face serves the paths under `prefix` ("/v1/"): they need the API key (when set), and their
        errors are written by `shape`. The first face's shape also answers paths outside every face."""
        self._faces[prefix] = shape

    @property
    def prefixes(self) -> Tuple[str, ...]:
        return tuple(self._faces)

    def respond(self, path: str, failure: Failure) -> Response:
        """`failure` as the face that serves `path` writes errors."""
        shapes = [shape for prefix, shape in self._faces.items() if path.startswith(prefix)]
        return (shapes or list(self._faces.values()))[0](failure)

    def failed(self, http: Request, exc: BaseException) -> Response:
        """The error response of `exc` (statuses as in `failure_of`) in the shape of the face `http` came to."""
        return self.respond(http.url.path, failure_of(exc, self.retry_after_s))

    # ---- requests ----------------------------------------------------------------------------
    async def body(self, http: Request) -> Dict[str, Any]:
        """The request body as a checked JSON object (413 beyond max_body_bytes; see body.py)."""
        return load_body(await read_body(http, self.max_body_bytes))

    @staticmethod
    def request(data: Dict[str, Any]):
        """la_edge's request model of a checked body: a ChatRequest with `messages`, else a CompletionRequest."""
        return validate(data, ChatRequest if "messages" in data else CompletionRequest)

    def check_alive(self) -> None:
        """Raise EngineUnavailableError (503) once the engine stopped or failed."""
        if not self.la.alive:
            failed = self.la.status()["failure"]
            raise EngineUnavailableError(f"engine failed: {failed}" if failed else "engine stopped")

    async def start(self, req):
        """Submit a parsed ChatRequest or CompletionRequest (its principles chosen by the steering):
        the running la_edge Request. Every face comes through here."""
        params = req.params(self.defaults)
        fut = self.run(req.submitter(params, self.la.max_branches, self.steering), self.la)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:  # the client left while the prompt was tokenized
            fut.add_done_callback(_cancel_submitted)
            raise

    # ---- answers -----------------------------------------------------------------------------
    async def answer(self, http: Request, request, answer: Answer, stream: bool) -> Response:
        """The response to a started request: `answer`'s stream, or its whole JSON object (an error
        response if the request fails or the client leaves first)."""
        if stream:
            return EventStream(request, self._events(request, answer), answer.media_type)
        try:
            result = await self.result(http, request, answer.logprobs)
        except Exception as exc:
            return self.failed(http, exc)
        return JSONResponse(answer.whole(request, result))

    async def result(self, http: Request, request, learn: bool = False):
        """The GenerationResult of a non-streaming request; ClientDisconnect (and the request
        cancelled) once its client left. learn: look up its tokens' bytes too (TokenBytes)."""
        fut = self.run(self._whole, request, learn)
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

    async def chunks(self, request, learn: bool = False):
        """The request's Chunks, read in a worker thread; an engine error is raised here.
        learn: look up the bytes of their alternatives too (TokenBytes)."""
        it = request.stream()
        while True:
            chunk = await self.run(self._next, it, learn)
            if chunk is None:
                return
            yield chunk

    async def _events(self, request, answer: Answer):
        try:
            for part in answer.opening():
                yield part
            failed = False
            try:
                async for chunk in self.chunks(request, answer.logprobs):
                    part = answer.chunk(chunk)
                    if part is not None:
                        yield part
            except Exception as exc:
                failed = True
                yield answer.failed(exc)
            for part in answer.closing(request, failed):
                yield part
        finally:
            request.cancel()  # a client that went away frees every sequence at once

    def _whole(self, request, learn: bool):
        result = request.result()
        if learn:
            self.token_bytes.learn_result(result)
        return result

    def _next(self, it, learn: bool):
        chunk = next(it, None)
        if learn and chunk is not None:
            self.token_bytes.learn_chunk(chunk)
        return chunk

    # ---- workers and the app -----------------------------------------------------------------
    def run(self, fn, *args) -> asyncio.Future:
        """fn(*args) in a worker thread."""
        return self._workers.run(fn, *args)

    def close(self, timeout: float = WORKERS_WAIT_S) -> bool:
        """Cancel the aligner's open requests and wait for the worker threads (the aligner stays open).

        True once no worker calls into the aligner any more; False if one still did after `timeout`.
        """
        self.la.cancel_all()
        idle = self._workers.close(timeout)
        self.la.cancel_all()  # what a worker submitted meanwhile (its client is gone)
        return idle

    def app(self) -> FastAPI:
        """A FastAPI app with the guard, errors in each face's shape and GET /health; the faces then
        mount their routes on it."""
        app = FastAPI(title="la_edge", docs_url=None, redoc_url=None, openapi_url=None)
        app.add_middleware(_Guard, gateway=self)

        @app.exception_handler(StarletteHTTPException)
        async def http_error(http: Request, exc: StarletteHTTPException):
            return self.failed(http, exc)

        @app.get("/health")
        async def health():
            s = self.la.status()
            body = {"status": "ok" if s["alive"] else "unavailable", "model": self.steering.model,
                    "active": s["active"], "queued": s["queued"], "sampler": s["sampler"], "failure": s["failure"],
                    "prompt_cache": s["prompt_cache"], "kv": s["kv"]}
            return JSONResponse(body, status_code=200 if s["alive"] else 503)

        return app


def _cancel_submitted(fut: asyncio.Future) -> None:
    if not fut.cancelled() and fut.exception() is None:
        fut.result().cancel()


def _consume(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()  # retrieved: no "exception was never retrieved" noise


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


class _Guard:
    """Pure ASGI middleware, the one place for: 401 under a face's prefix without the right Bearer key;
    `Connection: close` on every 5xx; an exception no route caught answered as a 500 (never a stack
    trace); a request that uvicorn cancels at shutdown answered 503 (if nothing was sent yet)."""

    def __init__(self, app, gateway: Gateway):
        self.app, self.gateway = app, gateway

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        gateway, path, started = self.gateway, scope["path"], False

        async def send_closing_on_5xx(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if message["status"] >= 500:
                    kept = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                    message = {**message, "headers": kept + [(b"connection", b"close")]}
            await send(message)

        async def refuse(failure: Failure):
            await gateway.respond(path, failure)(scope, receive, send_closing_on_5xx)

        key = gateway.api_key
        if key and path.startswith(gateway.prefixes):
            headers = dict(scope.get("headers") or [])
            if headers.get(b"authorization", b"").decode("latin-1") != f"Bearer {key}":
                await refuse(Failure(401, "invalid or missing API key", "authentication_error", "invalid_api_key"))
                return
        try:
            await self.app(scope, receive, send_closing_on_5xx)
        except asyncio.CancelledError:  # outlived the graceful shutdown; the request was cancelled too
            if not started:
                await refuse(Failure(503, "the server is shutting down", "server_error", "shutting_down"))
        except Exception as exc:
            if started:
                raise
            await refuse(failure_of(exc))
