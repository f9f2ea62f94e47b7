"""`la-edge serve`: an OpenAI-compatible HTTP face over the engine (FastAPI + uvicorn).

Alignment fields are request extensions: `principle`, `alignment_ratio`, `plausibility_top_p`,
`plausibility_temperature` (plus `top_k`, `min_p`, `repeat_penalty`), usable via `extra_body`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, Dict, List, Optional, Union

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import (BusyError, ChatTemplateError, ContextOverflowError, InvalidParameterError,
                     LaEdgeError)
from ..runtime.aligner import Aligner, Chunk, collect, stream_steps
from ..decoding.params import GenerationParams
from ..runtime.prompts import PromptPair, raw_pair

MAX_BODY_BYTES = 1 << 20


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: Optional[str] = None
    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    n: int = 1
    stream: bool = False
    stop: Optional[Union[str, List[str]]] = None
    seed: Optional[int] = None
    frequency_penalty: Optional[float] = None
    presence_penalty: Optional[float] = None
    user: Optional[str] = None
    stream_options: Optional[Dict[str, Any]] = None
    # la_edge extensions
    principle: Optional[str] = None
    alignment_ratio: Optional[float] = None
    plausibility_top_p: Optional[float] = None
    plausibility_temperature: Optional[float] = None
    top_k: Optional[int] = None
    min_p: Optional[float] = None
    repeat_penalty: Optional[float] = None
    ignore_eos: Optional[bool] = None


class ChatRequest(_Common):
    messages: List[Message] = Field(min_length=1)
    max_completion_tokens: Optional[int] = None
    logprobs: bool = False
    top_logprobs: Optional[int] = None


class CompletionRequest(_Common):
    prompt: str
    logprobs: Optional[int] = None
    principled_prompt: Optional[str] = None


def _error(status: int, message: str, type_: str = "invalid_request_error", code: Optional[str] = None,
           param: Optional[str] = None, headers: Optional[Dict[str, str]] = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _params(req: _Common, top_logprobs: int, default_max_tokens: int) -> GenerationParams:
    """The request's fields as one validated GenerationParams (unset fields keep defaults)."""
    if req.n != 1:
        raise InvalidParameterError("only n=1 is supported")
    max_tokens = getattr(req, "max_completion_tokens", None) or req.max_tokens or default_max_tokens
    given = {
        "ratio": req.alignment_ratio, "temperature": req.temperature, "top_p": req.top_p,
        "top_k": req.top_k, "min_p": req.min_p, "repeat_penalty": req.repeat_penalty,
        "frequency_penalty": req.frequency_penalty, "presence_penalty": req.presence_penalty,
        "seed": req.seed, "plausibility_top_p": req.plausibility_top_p,
        "plausibility_temperature": req.plausibility_temperature, "ignore_eos": req.ignore_eos,
    }
    kwargs = {k: v for k, v in given.items() if v is not None}
    stop = req.stop
    kwargs["stop"] = (stop,) if isinstance(stop, str) else tuple(stop or ())
    return GenerationParams(max_tokens=max_tokens, top_logprobs=top_logprobs, **kwargs)


class Server:
    """Holds the aligner and builds the FastAPI app."""

    def __init__(self, aligner: Aligner, model_name: str, api_key: Optional[str] = None,
                 max_body_bytes: int = MAX_BODY_BYTES, default_max_tokens: int = 256, retry_after_s: int = 1):
        self.la = aligner
        self.model_name = model_name
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        self.default_max_tokens = default_max_tokens
        self.retry_after_s = retry_after_s
        self.app = self._build()

    # ---- request plumbing ------------------------------------------------------------------
    async def _parse(self, request: Request, model_cls):
        body = b""
        async for part in request.stream():
            body += part
            if len(body) > self.max_body_bytes:
                return None, _error(413, f"request body exceeds {self.max_body_bytes} bytes", code="body_too_large")
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return None, _error(400, "request body is not valid JSON", code="invalid_json")
        if not isinstance(data, dict):
            return None, _error(400, "request body must be a JSON object", code="invalid_json")
        try:
            return model_cls.model_validate(data), None
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first.get("loc", ()))
            return None, _error(422, f"{param}: {first.get('msg')}", param=param, code="invalid_type")

    def _submit(self, pair: PromptPair, params: GenerationParams):
        return self.la.engine.submit(pair, params)

    def _failure(self, exc: Exception) -> JSONResponse:
        if isinstance(exc, BusyError):
            return _error(429, f"{exc}; retry later", type_="rate_limit_error", code="busy",
                          headers={"Retry-After": str(self.retry_after_s)})
        if isinstance(exc, ContextOverflowError):
            return _error(400, str(exc), code="context_length_exceeded")
        if isinstance(exc, (InvalidParameterError, ChatTemplateError)):
            return _error(400, str(exc), code="invalid_value")
        return _error(500, "internal error", type_="server_error")

    def _logprobs(self, chunk: Chunk) -> Dict[str, Any]:
        text = self.la.token_text
        return {
            "token": text(chunk.token), "logprob": chunk.logprob,
            "bytes": list(text(chunk.token).encode()),
            "top_logprobs": [{"token": text(t), "logprob": lp, "bytes": list(text(t).encode())}
                             for t, lp in chunk.top],
        }

    # ---- endpoints -----------------------------------------------------------------------
    def _build(self) -> FastAPI:
        app = FastAPI(title="la_edge", docs_url=None, redoc_url=None)

        app.add_middleware(_ApiKey, server=self)

        @app.exception_handler(Exception)
        async def internal(request: Request, exc: Exception):  # never a stack trace to the client
            return _error(500, "internal error", type_="server_error")

        @app.exception_handler(StarletteHTTPException)
        async def http_error(request: Request, exc: StarletteHTTPException):
            kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
            return _error(exc.status_code, str(exc.detail), type_=kind)

        @app.get("/health")
        async def health():
            e = self.la.engine
            return {"status": "ok", "model": self.model_name, "active": e.n_active, "queued": e.n_queued,
                    "sampler": e.chooser.path}

        @app.get("/v1/models")
        async def models():
            return {"object": "list", "data": [
                {"id": self.model_name, "object": "model", "created": 0, "owned_by": "la_edge"}]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            req, err = await self._parse(request, ChatRequest)
            if err:
                return err
            try:
                n_top = (req.top_logprobs or 0) if req.logprobs else 0
                params = _params(req, n_top, self.default_max_tokens)
                messages = [m.model_dump() for m in req.messages]
                pair = await asyncio.to_thread(lambda: self.la.template.pair(messages, req.principle))
                handle = self._submit(pair, params)
            except LaEdgeError as exc:
                return self._failure(exc)
            return await self._respond(request, req, pair, params, handle, chat=True)

        @app.post("/v1/completions")
        async def completions(request: Request):
            req, err = await self._parse(request, CompletionRequest)
            if err:
                return err
            try:
                params = _params(req, req.logprobs or 0, self.default_max_tokens)
                if not req.prompt:
                    raise InvalidParameterError("prompt must be a non-empty string")
                if req.principle is None and req.principled_prompt is None:
                    pair = raw_pair(req.prompt, None)
                else:
                    principled = req.principled_prompt or f"{req.principle}\n\n{req.prompt}"
                    pair = raw_pair(principled, req.prompt)
                handle = self._submit(pair, params)
            except LaEdgeError as exc:
                return self._failure(exc)
            return await self._respond(request, req, pair, params, handle, chat=False)

        return app

    async def _respond(self, request, req, pair, params, handle, chat: bool):
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        base = {"id": rid, "created": created, "model": self.model_name}
        if not req.stream:
            try:
                result = await asyncio.to_thread(
                    collect, stream_steps(handle, self.la.engine, params), handle, pair,
                    self.la.engine.chooser.path, self.la.token_text)
            except LaEdgeError as exc:
                handle.cancel()
                return self._failure(exc)
            usage = {k: result.usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
            lp = None
            if params.top_logprobs or getattr(req, "logprobs", None):
                lp = [self._logprobs(Chunk("", d["token"], d["logprob"], tuple((t["token"], t["logprob"])
                      for t in d["top"]))) for d in result.logprobs]
            if chat:
                choice = {"index": 0, "message": {"role": "assistant", "content": result.text},
                          "finish_reason": _finish(result.finish_reason),
                          "logprobs": {"content": lp} if lp is not None else None}
                return {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
            choice = {"index": 0, "text": result.text, "finish_reason": _finish(result.finish_reason),
                      "logprobs": {"content": lp} if lp is not None else None}
            return {**base, "object": "text_completion", "choices": [choice], "usage": usage}
        return StreamingResponse(self._sse(handle, params, base, chat, req), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    async def _sse(self, handle, params, base, chat: bool, req):
        it = stream_steps(handle, self.la.engine, params)
        obj = "chat.completion.chunk" if chat else "text_completion"
        include_usage = bool((req.stream_options or {}).get("include_usage"))
        completion = 0
        try:
            if chat:
                first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                yield _event({**base, "object": obj, "choices": [first]})
            while True:
                try:
                    chunk = await asyncio.to_thread(next, it, None)
                except LaEdgeError as exc:
                    yield _event({"error": {"message": str(exc), "type": "server_error"}})
                    break
                if chunk is None:
                    break
                completion += chunk.token is not None
                lp = {"content": [self._logprobs(chunk)]} if params.top_logprobs and chunk.token is not None else None
                fin = _finish(chunk.finish_reason) if chunk.finish_reason else None
                if chat:
                    choice = {"index": 0, "delta": {"content": chunk.text} if chunk.text else {},
                              "finish_reason": fin, "logprobs": lp}
                else:
                    choice = {"index": 0, "text": chunk.text, "finish_reason": fin, "logprobs": lp}
                yield _event({**base, "object": obj, "choices": [choice]})
            if include_usage:
                usage = {"prompt_tokens": handle.prompt_tokens, "completion_tokens": completion,
                         "total_tokens": handle.prompt_tokens + completion}
                yield _event({**base, "object": obj, "choices": [], "usage": usage})
            yield "data: [DONE]\n\n"
        finally:
            handle.cancel()  # a client that went away frees both sequences at once
            try:
                it.close()
            except ValueError:  # still running in its worker thread; it ends on the cancel
                pass


class _ApiKey:
    """Pure ASGI middleware: 401 on /v1/ routes without the right Bearer key (streams untouched)."""

    def __init__(self, app, server: "Server"):
        self.app, self.server = app, server

    async def __call__(self, scope, receive, send):
        key = self.server.api_key
        if key and scope["type"] == "http" and scope["path"].startswith("/v1/"):
            headers = dict(scope.get("headers") or [])
            if headers.get(b"authorization", b"").decode("latin-1") != f"Bearer {key}":
                response = _error(401, "invalid or missing API key", type_="authentication_error",
                                  code="invalid_api_key")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _event(obj: Dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _finish(reason: Optional[str]) -> Optional[str]:
    return {"stop": "stop", "length": "length", "cancelled": "stop", "error": "stop"}.get(reason, reason)


class BackgroundServer:
    """Runs a Server's app with uvicorn in a daemon thread (tests, benchmarks, embedding apps)."""

    def __init__(self, server: "Server", host: str = "127.0.0.1", port: int = 0):
        import socket
        import threading

        import uvicorn

        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.base_url = f"http://{host}:{port}"
        self._uv = uvicorn.Server(uvicorn.Config(server.app, host=host, port=port, log_level="error"))
        self._thread = threading.Thread(target=self._uv.run, name="la-edge-http", daemon=True)
        self._thread.start()
        deadline = time.time() + 30
        while not self._uv.started:
            if time.time() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"server did not start on {self.base_url}")
            time.sleep(0.02)

    def stop(self) -> None:
        self._uv.should_exit = True
        self._thread.join(timeout=10)


def serve(aligner: Aligner, host: str = "127.0.0.1", port: int = 8080, model_name: str = "la-edge",
          api_key: Optional[str] = None, log_level: str = "warning") -> None:
    """Run the server until interrupted."""
    import uvicorn

    aligner.engine.start()
    server = Server(aligner, model_name=model_name, api_key=api_key)
    uvicorn.run(server.app, host=host, port=port, log_level=log_level)
