"""The server's response side: OpenAI JSON built once from a Chunk or a GenerationResult, and errors.

Logprobs that are not finite (-inf where the aligned distribution underflows, e.g. at
alignment_ratio 100) are sent as LOGPROB_FLOOR = -9999.0, the floor OpenAI itself uses, so every
body is valid JSON. Every 5xx carries `Connection: close`. Errors map to statuses in `failure` only.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any, Dict, Iterable, List, Optional, Tuple

from fastapi.responses import JSONResponse

from ..errors import (BusyError, ChatTemplateError, ContextOverflowError, EngineUnavailableError,
                      InvalidParameterError, LaEdgeError, RequestTimeoutError, StepFailedError)
from .openai_schema import RequestError
from .presets import UnknownModelError

LOGPROB_FLOOR = -9999.0
log = logging.getLogger("la_edge.server")


# ---- errors ----------------------------------------------------------------------------------
def error_body(message: str, type_: str = "invalid_request_error", code: Optional[str] = None,
               param: Optional[str] = None) -> Dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error(status: int, message: str, type_: str = "invalid_request_error", code: Optional[str] = None,
          param: Optional[str] = None, headers: Optional[Dict[str, str]] = None) -> JSONResponse:
    """An OpenAI-style error response; a 5xx also closes the connection."""
    return _respond(status, error_body(message, type_, code, param), headers or {})


def _respond(status: int, body: Dict[str, Any], headers: Dict[str, str]) -> JSONResponse:
    if status >= 500:
        headers = {**headers, "Connection": "close"}
    return JSONResponse(body, status_code=status, headers=headers)


def _mapped(exc: BaseException, retry_after_s: int = 1) -> Tuple[int, Dict[str, Any], Dict[str, str]]:
    """The one mapping of exceptions to HTTP statuses: (status, OpenAI error body, headers)."""
    if isinstance(exc, RequestError):
        return exc.status, error_body(str(exc), code=exc.code, param=exc.param), {}
    if isinstance(exc, BusyError):
        return 429, error_body(f"{exc}; retry later", "rate_limit_error", "busy"), {"Retry-After": str(retry_after_s)}
    if isinstance(exc, UnknownModelError):
        return 404, error_body(str(exc), code="model_not_found", param="model"), {}
    if isinstance(exc, ContextOverflowError):
        return 400, error_body(str(exc), code="context_length_exceeded", param="max_tokens"), {}
    if isinstance(exc, (InvalidParameterError, ChatTemplateError)):
        return 400, error_body(str(exc), code="invalid_value"), {}
    if isinstance(exc, RequestTimeoutError):
        return 504, error_body(str(exc), "server_error", "request_timeout"), {}
    if isinstance(exc, EngineUnavailableError):
        return 503, error_body(f"{exc}; the server cannot generate", "server_error", "engine_unavailable"), {}
    if isinstance(exc, StepFailedError):
        return 500, error_body(f"generation failed: {exc}", "server_error", "step_failed"), {}
    if isinstance(exc, LaEdgeError):
        return 500, error_body(str(exc), "server_error", type(exc).__name__), {}
    log.error("internal error", exc_info=exc)
    return 500, error_body("internal error", "server_error"), {}


def status_of(exc: BaseException, retry_after_s: int = 1) -> Tuple[int, str, Dict[str, str]]:
    """(status, message, headers) of an exception, as `failure` maps it (for faces with another error shape)."""
    status, body, headers = _mapped(exc, retry_after_s)
    return status, body["error"]["message"], headers


def failure(exc: BaseException, retry_after_s: int = 1) -> JSONResponse:
    """The error response for an exception (statuses as in `_mapped`)."""
    return _respond(*_mapped(exc, retry_after_s))


def stream_error(exc: BaseException) -> str:
    """The error event of a stream that already answered 200 (then the stream ends): `failure`'s body."""
    return event(_mapped(exc)[1])


# ---- bodies ----------------------------------------------------------------------------------
def finite(logprob: Optional[float]) -> Optional[float]:
    return logprob if logprob is None or math.isfinite(logprob) else LOGPROB_FLOOR


def finish(reason: Optional[str]) -> Optional[str]:
    return {"cancelled": "stop", "error": "stop"}.get(reason, reason)


def event(obj: Dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, allow_nan=False)}\n\n"


class Wire:
    """Builds one request's OpenAI objects; `la` gives token text and bytes."""

    def __init__(self, la, base: Dict[str, Any], chat: bool, logprobs: bool):
        self.la, self.base, self.chat, self.logprobs = la, base, chat, logprobs
        self.offset = 0  # text_offset of the next token (completions logprobs)

    def _token(self, token: int, logprob: Optional[float]) -> Dict[str, Any]:
        return {"token": self.la.token_text(token), "logprob": finite(logprob),
                "bytes": list(self.la.token_bytes(token))}

    def _logprobs(self, steps: Iterable[Tuple[int, Optional[float], Iterable[Tuple[int, float]], float]]):
        """steps: (token, logprob, top, ratio_scale) -> chat {"content": [...]} or the completions
        columns; ratio_scale (an adaptive ratio's factor) is la_edge's, sent only where it is not 1."""
        if self.chat:
            content = []
            for t, lp, top, scale in steps:
                entry = {**self._token(t, lp), "top_logprobs": [self._token(a, alp) for a, alp in top]}
                if scale != 1.0:
                    entry["ratio_scale"] = scale
                content.append(entry)
            return {"content": content}
        out: Dict[str, List[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        scales = []
        for t, lp, top, scale in steps:
            text = self.la.token_text(t)
            out["tokens"].append(text)
            out["token_logprobs"].append(finite(lp))
            out["top_logprobs"].append({self.la.token_text(a): finite(alp) for a, alp in top})
            out["text_offset"].append(self.offset)
            scales.append(scale)
            self.offset += len(text)
        if any(x != 1.0 for x in scales):
            out["ratio_scale"] = scales
        return out

    def chunk(self, c) -> str:
        """The SSE event of one Chunk."""
        lp = None
        if self.logprobs and c.token is not None:
            lp = self._logprobs([(c.token, c.logprob, c.top, c.ratio_scale)])
        fin = finish(c.finish_reason)
        if self.chat:
            choice = {"index": 0, "delta": {"content": c.text} if c.text else {}, "finish_reason": fin, "logprobs": lp}
            return event({**self.base, "object": "chat.completion.chunk", "choices": [choice]})
        choice = {"index": 0, "text": c.text, "finish_reason": fin, "logprobs": lp}
        return event({**self.base, "object": "text_completion", "choices": [choice]})

    def role(self) -> str:
        """The first event of a chat stream."""
        choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        return event({**self.base, "object": "chat.completion.chunk", "choices": [choice]})

    def usage_event(self, usage: Dict[str, int]) -> str:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return event({**self.base, "object": obj, "choices": [], "usage": _usage(usage)})

    def result(self, r) -> Dict[str, Any]:
        """The non-streaming body of a GenerationResult."""
        lp = None
        if self.logprobs:
            lp = self._logprobs((d["token"], d["logprob"], [(a["token"], a["logprob"]) for a in d["top"]],
                                 d.get("ratio_scale", 1.0)) for d in r.logprobs)
        # la_edge's extension: every branch's exact prompt when there are more than two
        extra = {"la_edge": {"prompts": r.prompts}} if "branches" in r.prompts else {}
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": r.text},
                      "finish_reason": finish(r.finish_reason), "logprobs": lp}
            return {**self.base, "object": "chat.completion", "choices": [choice], "usage": _usage(r.usage), **extra}
        choice = {"index": 0, "text": r.text, "finish_reason": finish(r.finish_reason), "logprobs": lp}
        return {**self.base, "object": "text_completion", "choices": [choice], "usage": _usage(r.usage), **extra}


def _usage(u: Dict[str, int]) -> Dict[str, int]:
    out = {k: u[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    # As OpenAI reports cache hits; plain_cached_tokens is la_edge's (the plain branch).
    out["prompt_tokens_details"] = {"cached_tokens": u["cached_tokens"],
                                    "plain_cached_tokens": u["plain_cached_tokens"]}
    return out
