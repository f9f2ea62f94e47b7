"""Ollama's API on the server's port: /api/chat, /api/generate, /api/tags, /api/show, /api/ps, /api/version.

A chat or generate body is rewritten into la_edge's request (the OpenAI body openai_schema reads)
and goes through the gateway (faces/gateway.py): one path for presets (`model: "MODEL:NAME"`), the
system message as the principle, validation and the engine. Answers are Ollama's (NDJSON lines when
`stream` is true, its default; one object otherwise; durations in nanoseconds); errors are
`{"error": "..."}` with a 400 (a wrong type too), 401, 404 (unknown preset), 429 or 5xx.

Accepted and ignored, as Ollama-only machinery: `keep_alive`, `options.num_ctx` (the context is
fixed at load: serve --n-ctx) and other load-time options. Refused with a 400 naming the field:
`format`, `tools`, `images`, `think`, `template`, `suffix`, `context` (when set to anything but their
empty values). Unknown fields are ignored, as Ollama does.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import time
from typing import Any, Dict, List, Optional, Tuple

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .. import __version__
from ..errors import InvalidParameterError
from .body import RequestError
from .flags import HTTP_FIELDS as PARAM_FIELDS  # HTTP name -> GenerationParams field (alignment_ratio -> ratio)
from .gateway import Failure, Gateway, failure_of, finish_reason
from .presets import PLAIN_TAG
from .tokens import TokenBytes

__all__ = ["mount_ollama", "OLLAMA_VERSION", "to_openai"]

OLLAMA_VERSION = "0.6.2"  # the Ollama API version whose shapes these endpoints follow
NDJSON = "application/x-ndjson"
# options -> the OpenAI request field it becomes
OPTIONS = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p", "seed": "seed",
           "num_predict": "max_tokens", "stop": "stop", "repeat_penalty": "repeat_penalty",
           "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty"}
# la_edge's own fields, accepted at the top level and in options (the top level wins)
LA_EDGE = ("principle", "alignment_ratio", "principles", "avoid", "ratio_schedule", "principle_from",
           "plausibility_top_p", "plausibility_temperature", "plausibility_min_p", "ignore_eos", "timeout",
           "negative_prompt", "cfg_scale", "guidance_scale", "documents", "document_ratio", "ratio_guard")
# Ollama features la_edge does not have: the field and why, refused when set to a non-empty value
UNSUPPORTED = {
    "format": "structured output (JSON mode or a schema) is not supported",
    "tools": "tools (function calling) are not supported",
    "images": "images are not supported (text models only)",
    "think": "thinking mode is not supported",
    "template": "la_edge renders with the model's chat template (use raw: true with a whole prompt instead)",
    "suffix": "insertion (fill-in-the-middle) is not supported",
    "context": "token context is not supported: send the conversation as /api/chat messages",
}


class _Origin(dict):
    """OpenAI field -> the Ollama field it came from (options.num_predict), to name it in errors."""


def _refuse(body: Dict[str, Any], fields) -> None:
    for name in fields:
        if body.get(name) not in (None, False, "", [], {}):
            raise RequestError(f"{name}: {UNSUPPORTED[name]}", param=name, code="unsupported")


def _want(body: Dict[str, Any], name: str, kind, what: str):
    value = body.get(name)
    if value is not None and (not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))):
        raise RequestError(f"{name} must be {what}, got {type(value).__name__}", param=name)
    return value


def to_openai(body: Dict[str, Any], chat: bool) -> Tuple[Dict[str, Any], _Origin]:
    """An Ollama /api/chat or /api/generate body as the OpenAI request body la_edge takes, and where
    each field came from. Raises RequestError (400) naming the Ollama field."""
    _refuse(body, ("format", "tools", "think") + (() if chat else ("images", "template", "suffix", "context")))
    model = _want(body, "model", str, "a string")
    if not model:
        raise RequestError("model is required", param="model")
    options = _want(body, "options", dict, "an object") or {}
    out: Dict[str, Any] = {"model": model, "stream": _want(body, "stream", bool, "true or false") is not False}
    origin = _Origin()
    for name, field in OPTIONS.items():
        if options.get(name) is not None:
            out[field], origin[field] = options[name], f"options.{name}"
    if isinstance(out.get("max_tokens"), int) and not isinstance(out["max_tokens"], bool) and out["max_tokens"] < 0:
        del out["max_tokens"]  # -1 (no limit) and -2 (fill the context): the server's default
    for name in LA_EDGE:
        if body.get(name) is not None:
            out[name] = body[name]
        elif options.get(name) is not None:
            out[name], origin[name] = options[name], f"options.{name}"
    if _want(body, "logprobs", bool, "true or false"):
        top = _want(body, "top_logprobs", int, "an integer") or 0
        out.update({"logprobs": True, "top_logprobs": top} if chat else {"logprobs": top})
    if chat:
        out["messages"] = _messages(body.get("messages"))
    elif _want(body, "raw", bool, "true or false"):
        out["prompt"] = _want(body, "prompt", str, "a string")
        if body.get("system"):
            raise RequestError("system: with raw: true the prompt is sent as it is (put the system text in it)",
                               param="system")
    else:
        system = _want(body, "system", str, "a string")
        out["messages"] = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": _want(body, "prompt", str, "a string")}]
    return out, origin


def _messages(value: Any) -> List[Dict[str, Any]]:
    if not isinstance(value, list):
        raise RequestError(f"messages must be a list, got {type(value).__name__}", param="messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise RequestError(f"messages[{i}] must be an object with role and content", param=f"messages[{i}]")
        for name in ("images", "tool_calls"):
            if m.get(name):
                why = UNSUPPORTED["images"] if name == "images" else UNSUPPORTED["tools"]
                raise RequestError(f"messages[{i}].{name}: {why}", param=f"messages[{i}].{name}", code="unsupported")
        content = m.get("content")
        out.append({"role": m.get("role"), "content": "" if content is None else content})  # clients drop ""
    return out


def _is_load(body: Dict[str, Any], chat: bool) -> bool:
    """An empty prompt or no messages: Ollama's request to load (or, with keep_alive 0, unload) the model."""
    return not body.get("messages") if chat else body.get("prompt") in (None, "")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def _line(obj: Dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False) + "\n"


def error_response(f: Failure) -> JSONResponse:
    """Ollama's error shape, {"error": "..."} (the gateway adds `Connection: close` to a 5xx)."""
    status = 400 if f.status == 422 else f.status  # a wrong type: Ollama answers 400 to any bad body
    return JSONResponse({"error": f.message}, status_code=status, headers=f.headers)


def _renamed(exc: Exception, origin: _Origin) -> Exception:
    """An error about an OpenAI field (a RequestError's param, or the field a GenerationParams message
    starts with) renamed to the Ollama field it came from."""
    if not isinstance(exc, InvalidParameterError):
        return exc
    message = str(exc)
    field = exc.param if isinstance(exc, RequestError) else next(
        (f for f in origin if message.startswith(f) or message.startswith(PARAM_FIELDS.get(f, "\0"))), None)
    if field not in origin:
        return exc
    name = origin[field]
    for spelled in (field, PARAM_FIELDS.get(field)):
        if spelled and message.startswith(spelled):
            return RequestError(name + message[len(spelled):], 400, name, getattr(exc, "code", "invalid_value"))
    return RequestError(f"{name}: {message}", 400, name, getattr(exc, "code", "invalid_value"))


class _Answer:
    """Writes one request's Ollama objects (gateway.Answer; chat: message, generate: response)."""

    media_type = NDJSON

    def __init__(self, token_bytes: TokenBytes, model: str, chat: bool, logprobs: bool, t0: float):
        self.token_bytes, self.model, self.chat, self.logprobs, self.t0 = token_bytes, model, chat, logprobs, t0
        self.t_started = time.perf_counter()

    def _body(self, text: str, done: bool) -> Dict[str, Any]:
        out: Dict[str, Any] = {"model": self.model, "created_at": _now()}
        if self.chat:
            out["message"] = {"role": "assistant", "content": text}
        else:
            out["response"] = text
        out["done"] = done
        return out

    def opening(self) -> Tuple[str, ...]:
        return ()

    def chunk(self, c) -> Optional[str]:
        """One NDJSON line per chunk with text (or with a token, when logprobs are asked for)."""
        with_token = self.logprobs and c.token is not None
        if not (c.text or with_token):
            return None
        out = self._body(c.text, False)
        if with_token:
            out["logprobs"] = [self.token_bytes.chunk_step(c).entry()]
        return _line(out)

    def failed(self, exc: Exception) -> str:
        return _line({"error": failure_of(exc).message})

    def closing(self, request, failed: bool) -> Tuple[str, ...]:
        return () if failed else (_line(self.last(request)),)

    def last(self, request, text: str = "", finish: Optional[str] = None) -> Dict[str, Any]:
        """The final object: done, done_reason, counts and durations (ns)."""
        t, u = request.timings(), request.usage
        ns = lambda s: int(round(s * 1e9))  # noqa: E731
        out = self._body(text, True)
        out.update({"done_reason": finish_reason(finish or request.finish_reason) or "stop",
                    "total_duration": ns(time.perf_counter() - self.t0),
                    "load_duration": ns(self.t_started - self.t0 + t["queued_s"]),
                    "prompt_eval_count": u["prompt_tokens"], "prompt_eval_duration": ns(t["prefill_s"]),
                    "eval_count": u["completion_tokens"], "eval_duration": ns(t["decode_s"])})
        return out

    def whole(self, request, result) -> Dict[str, Any]:
        out = self.last(request, result.text, result.finish_reason)
        if self.logprobs:
            out["logprobs"] = [step.entry() for step in self.token_bytes.result_steps(result)]
        return out


def mount_ollama(app: FastAPI, gateway: Gateway) -> None:
    """Add Ollama's endpoints to `app`, answering through `gateway`."""
    la, steering = gateway.la, gateway.steering
    path = la.model_path
    info = _model_info(path)
    gateway.face("/api/", error_response)

    def entry(name: str) -> Dict[str, Any]:
        digest = hashlib.sha256(f"{path}\0{info['size']}\0{info['mtime']}\0{name}".encode()).hexdigest()
        return {"name": name, "model": name, "modified_at": info["modified_at"], "size": info["size"],
                "digest": digest, "details": info["details"]}

    async def generate(http: Request, chat: bool):
        t0 = time.perf_counter()
        origin = _Origin()
        try:
            gateway.check_alive()
            body = await gateway.body(http)
            if _is_load(body, chat):
                return _load(body, chat)
            data, origin = to_openai(body, chat)
            req = gateway.request(data)
            request = await gateway.start(req)
        except Exception as exc:
            return gateway.failed(http, _renamed(exc, origin))
        answer = _Answer(gateway.token_bytes, data["model"], chat, bool(data.get("logprobs")), t0)
        return await gateway.answer(http, request, answer, req.stream)

    def _load(body: Dict[str, Any], chat: bool) -> JSONResponse:
        model = _want(body, "model", str, "a string")
        if not model:
            raise RequestError("model is required", param="model")
        steering.preset(model)  # an unknown preset is a 404 here too
        out: Dict[str, Any] = {"model": model, "created_at": _now()}
        out.update({"message": {"role": "assistant", "content": ""}} if chat else {"response": ""})
        out.update({"done": True, "done_reason": "unload" if body.get("keep_alive") in (0, "0", "0s") else "load"})
        return JSONResponse(out)

    @app.post("/api/chat")
    async def chat(http: Request):
        return await generate(http, chat=True)

    @app.post("/api/generate")
    async def generate_(http: Request):
        return await generate(http, chat=False)

    @app.get("/api/tags")
    async def tags():
        return {"models": [entry(name) for name in steering.ids()]}

    @app.get("/api/ps")
    async def ps():
        far = "2318-01-01T00:00:00Z"  # loaded until the server stops
        return {"models": [{**entry(steering.model), "expires_at": far, "size_vram": 0,
                            "context_length": la.n_ctx}]}

    @app.get("/api/version")
    async def version():
        return {"version": OLLAMA_VERSION, "la_edge": __version__}

    @app.post("/api/show")
    async def show(http: Request):
        try:
            body = await gateway.body(http)
            name = body.get("model", body.get("name"))  # `name`: older clients
            if not isinstance(name, str) or not name:
                raise RequestError("model is required", param="model")
            spec = steering.preset(name)
            if name not in steering.ids() and name != steering.model + steering.separator + PLAIN_TAG:
                raise RequestError(f"model {name[:120]!r} not found; this server has: {', '.join(steering.ids())}",
                                   status=404, param="model", code="model_not_found")
        except Exception as exc:
            return gateway.failed(http, exc)
        t = la.template
        lines = [f"FROM {path}"] + ([f"# la_edge preset: {spec.describe()}"] if spec is not None else [])
        return {"modelfile": "\n".join(lines) + "\n", "parameters": "", "template": t.template or t.source,
                "details": info["details"], "modified_at": info["modified_at"], "capabilities": ["completion"],
                "model_info": {"general.architecture": info["details"]["family"],
                               f"{info['details']['family']}.context_length": la.n_ctx},
                "la_edge": {"preset": spec.to_fields() if spec is not None else None,
                            "chat_template": t.source, "principle_placement": t.placement}}


def _model_info(path: str) -> Dict[str, Any]:
    """Size, time and details of the loaded model file (or folder), read once."""
    from ..backends.gguf_meta import gguf_architecture
    from ..backends.models import quantization

    try:
        st = os.stat(path)
        size, mtime = st.st_size, st.st_mtime
    except OSError:
        size, mtime = 0, 0.0
    gguf = path.endswith(".gguf")
    family = (gguf_architecture(path) if gguf else None) or "unknown"
    modified = datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc).isoformat().replace("+00:00", "Z")
    details = {"parent_model": "", "format": "gguf" if gguf else "onnx", "family": family, "families": [family],
               "parameter_size": "", "quantization_level": quantization(os.path.basename(path)) or ""}
    return {"size": size, "mtime": mtime, "modified_at": modified, "details": details}
