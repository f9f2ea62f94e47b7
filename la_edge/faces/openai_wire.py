"""OpenAI's answers: JSON built once from a Chunk or a GenerationResult, and errors in OpenAI's shape.

Statuses come from gateway.failure_of; logprob entries from faces/tokens.py (non-finite logprobs
are sent as tokens.LOGPROB_FLOOR, so every body is valid JSON).
"""

from __future__ import annotations

import json
from typing import Any, Dict, Iterable, List

from fastapi.responses import JSONResponse

from .gateway import Failure, failure_of, finish_reason
from .tokens import Step, TokenBytes, finite


# ---- errors ----------------------------------------------------------------------------------
def error_body(f: Failure) -> Dict[str, Any]:
    return {"error": {"message": f.message, "type": f.type, "param": f.param, "code": f.code}}


def error_response(f: Failure) -> JSONResponse:
    """An OpenAI-style error response (the gateway adds `Connection: close` to a 5xx)."""
    return JSONResponse(error_body(f), status_code=f.status, headers=f.headers)


# ---- bodies ----------------------------------------------------------------------------------
def event(obj: Dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, allow_nan=False)}\n\n"


class Wire:
    """Writes one request's OpenAI objects (gateway.Answer): SSE events, or the whole JSON body."""

    media_type = "text/event-stream"

    def __init__(self, token_bytes: TokenBytes, base: Dict[str, Any], chat: bool, logprobs: bool,
                 include_usage: bool = False):
        self.token_bytes, self.base, self.chat, self.logprobs = token_bytes, base, chat, logprobs
        self.include_usage = include_usage
        self.offset = 0  # text_offset of the next token (completions logprobs)

    def _logprobs(self, steps: Iterable[Step]):
        """Chat's {"content": [...]} or the completions columns; ratio_scale (an adaptive ratio's
        factor, or 0 where the ratio guard held) is la_edge's, sent only where it is not 1."""
        if self.chat:
            content = []
            for step in steps:
                entry = step.entry()
                if step.ratio_scale != 1.0:
                    entry["ratio_scale"] = step.ratio_scale
                content.append(entry)
            return {"content": content}
        out: Dict[str, List[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        scales = []
        for step in steps:
            text = step.token.text
            out["tokens"].append(text)
            out["token_logprobs"].append(finite(step.token.logprob))
            out["top_logprobs"].append({a.text: finite(a.logprob) for a in step.top})
            out["text_offset"].append(self.offset)
            scales.append(step.ratio_scale)
            self.offset += len(text)
        if any(x != 1.0 for x in scales):
            out["ratio_scale"] = scales
        return out

    def opening(self) -> Iterable[str]:
        """A chat stream's first event names the role."""
        if self.chat:
            choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            yield event({**self.base, "object": "chat.completion.chunk", "choices": [choice]})

    def chunk(self, c) -> str:
        """The SSE event of one Chunk."""
        lp = None
        if self.logprobs and c.token is not None:
            lp = self._logprobs([self.token_bytes.chunk_step(c)])
        fin = finish_reason(c.finish_reason)
        if self.chat:
            choice = {"index": 0, "delta": {"content": c.text} if c.text else {}, "finish_reason": fin, "logprobs": lp}
            return event({**self.base, "object": "chat.completion.chunk", "choices": [choice]})
        choice = {"index": 0, "text": c.text, "finish_reason": fin, "logprobs": lp}
        return event({**self.base, "object": "text_completion", "choices": [choice]})

    def failed(self, exc: Exception) -> str:
        """The error event of a stream that already answered 200 (then the stream ends)."""
        return event(error_body(failure_of(exc)))

    def closing(self, request, failed: bool) -> Iterable[str]:
        """The usage event (when the request asked for it), then [DONE]."""
        if self.include_usage:
            obj = "chat.completion.chunk" if self.chat else "text_completion"
            yield event({**self.base, "object": obj, "choices": [], "usage": _usage(request.usage)})
        yield "data: [DONE]\n\n"

    def whole(self, request, r) -> Dict[str, Any]:
        """The non-streaming body of a GenerationResult."""
        lp = self._logprobs(self.token_bytes.result_steps(r)) if self.logprobs else None
        # la_edge's extension: every branch's exact prompt when there are more than two
        extra = {"la_edge": {"prompts": r.prompts}} if "branches" in r.prompts else {}
        fin = finish_reason(r.finish_reason)
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": r.text}, "finish_reason": fin,
                      "logprobs": lp}
            return {**self.base, "object": "chat.completion", "choices": [choice], "usage": _usage(r.usage), **extra}
        choice = {"index": 0, "text": r.text, "finish_reason": fin, "logprobs": lp}
        return {**self.base, "object": "text_completion", "choices": [choice], "usage": _usage(r.usage), **extra}


def _usage(u: Dict[str, int]) -> Dict[str, int]:
    out = {k: u[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    # As OpenAI reports cache hits; plain_cached_tokens is la_edge's (the plain branch).
    out["prompt_tokens_details"] = {"cached_tokens": u["cached_tokens"],
                                    "plain_cached_tokens": u["plain_cached_tokens"]}
    return out
