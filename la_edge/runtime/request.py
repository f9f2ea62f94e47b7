"""One generation in flight: `Request` (from Aligner.submit) turns engine events into text Chunks.

Chunks are new text (never a split UTF-8 character) with the token and its logprobs; stop strings
are found across token boundaries. `GenerationResult` is the whole answer.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

from ..decoding.params import GenerationParams
from .engine import RequestHandle

__all__ = ["Chunk", "GenerationResult", "Request"]


@dataclass(frozen=True)
class Chunk:
    """A piece of streamed output: `text` is new text (never a split UTF-8 character)."""

    text: str
    token: Optional[int]
    logprob: Optional[float] = None
    top: Tuple[Tuple[int, float], ...] = ()
    finish_reason: Optional[str] = None
    top_text: Tuple[str, ...] = ()  # the text of each `top` alternative
    piece: bytes = b""  # the token's own bytes
    ratio_scale: float = 1.0  # the adaptive ratio's factor at this token (1 if fixed; 0 where the ratio guard held)


@dataclass
class GenerationResult:
    """The whole answer with what produced it."""

    text: str
    tokens: List[int]
    prompts: Dict[str, object]
    finish_reason: str
    usage: Dict[str, int]
    timings: Dict[str, float]
    seed: int
    sampler: str
    logprobs: List[Dict[str, object]] = field(default_factory=list)

    def to_dict(self) -> Dict[str, object]:
        return {
            "text": self.text, "tokens": self.tokens, "prompts": self.prompts,
            "finish_reason": self.finish_reason, "usage": self.usage, "timings": self.timings,
            "seed": self.seed, "sampler": self.sampler, "logprobs": self.logprobs,
        }


from .stops import StopFilter as _StopFilter  # noqa: E402 (stop strings in time linear in the new text)


def _text_chunks(handle: RequestHandle, params: GenerationParams) -> Iterator[Chunk]:
    """Turn a request's StepEvents into text Chunks, applying stop strings (no backend call)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    stop = _StopFilter(params.stop)
    try:
        for ev in handle:
            piece = b"" if ev.eog else ev.piece
            text, hit = stop.push(decoder.decode(piece, final=ev.finish_reason is not None))
            top_text = tuple(b.decode("utf-8", "replace") for b in ev.top_pieces)
            if hit:
                handle.stop()  # ends like a finished request: the prompt cache keeps its sequences
                yield Chunk(text, ev.token, ev.logprob, ev.top, "stop", top_text, ev.piece, ev.ratio_scale)
                return
            if ev.finish_reason is not None:
                text += stop.flush()
            yield Chunk(text, ev.token, ev.logprob, ev.top, ev.finish_reason, top_text, ev.piece, ev.ratio_scale)
    finally:
        handle.cancel()  # frees its sequences if the consumer stops early


class _Record:
    """What a request produced so far (kept apart from Request: the chunk generator holds only this)."""

    def __init__(self):
        self.parts: List[str] = []
        self.tokens: List[int] = []
        self.logprobs: List[Dict[str, object]] = []
        self.finish: Optional[str] = None


def _recorded(handle: RequestHandle, params: GenerationParams, rec: _Record) -> Iterator[Chunk]:
    # No reference back to the Request: a dropped stream is closed (and cancelled) at once.
    try:
        for c in _text_chunks(handle, params):
            rec.parts.append(c.text)
            if c.token is not None:
                rec.tokens.append(c.token)
                rec.logprobs.append(_logprob_entry(c))
            if c.finish_reason:
                rec.finish = c.finish_reason
            yield c
    finally:
        handle.cancel()


def _logprob_entry(c: Chunk) -> Dict[str, object]:
    entry = {"token": c.token, "text": c.piece.decode("utf-8", "replace"), "logprob": c.logprob,
             "top": [{"token": t, "text": tt, "logprob": lp} for (t, lp), tt in zip(c.top, c.top_text)]}
    if c.ratio_scale != 1.0:
        entry["ratio_scale"] = c.ratio_scale
    return entry


class Request:
    """One submitted generation (see `Aligner.submit`); consume it from one thread at a time.

    stream() yields its Chunks (once; closing or dropping it early cancels the request). result()
    drains what is left and returns the GenerationResult, streamed chunks included. cancel() ends
    it at once, from any thread, and frees its sequences. Engine errors surface from both.
    """

    def __init__(self, handle: RequestHandle, prompts: Dict[str, object], params: GenerationParams, sampler: str):
        self.prompts = prompts
        self.params = params
        self._handle = handle
        self._sampler = sampler
        self._rec = _Record()
        self._chunks = _recorded(handle, params, self._rec)
        self._streamed = False

    def stream(self) -> Iterator[Chunk]:
        """The answer as Chunks, each recorded for result(); may be called once."""
        if self._streamed:
            raise RuntimeError("a Request streams once; use result() for the rest")
        self._streamed = True
        return self._chunks

    def result(self) -> GenerationResult:
        """Wait for the end (of what stream() left, if used) and return the whole answer."""
        self._streamed = True
        for _ in self._chunks:
            pass
        return GenerationResult(
            text=self.text, tokens=list(self._rec.tokens),
            prompts=dict(self.prompts),
            finish_reason=self.finish_reason or "length", usage=self.usage, timings=self.timings(),
            seed=self.seed, sampler=self._sampler, logprobs=list(self._rec.logprobs))

    def cancel(self) -> None:
        """End the request now (safe from any thread, also while another thread streams it)."""
        self._handle.cancel()

    @property
    def text(self) -> str:
        """The text produced so far."""
        return "".join(self._rec.parts)

    @property
    def finish_reason(self) -> Optional[str]:
        """stop, length, cancelled or error once finished; None while running."""
        return self._rec.finish or self._handle.finish_reason

    @property
    def done(self) -> bool:
        return self._handle.finish_reason is not None

    @property
    def seed(self) -> int:
        return self._handle.seed

    @property
    def prompt_tokens(self) -> int:
        return self._handle.prompt_tokens

    @property
    def completion_tokens(self) -> int:
        """Tokens generated and consumed so far."""
        return len(self._rec.tokens)

    @property
    def usage(self) -> Dict[str, int]:
        """Token counts: prompt, completion (so far), total, plain prompt, shared prefix, and the
        prompt tokens taken from the prompt cache (cached_tokens: principled, plain_cached_tokens)."""
        h, n = self._handle, len(self._rec.tokens)
        cached_p, cached_0 = h.cached_tokens
        return {
            "prompt_tokens": h.prompt_tokens, "completion_tokens": n, "total_tokens": h.prompt_tokens + n,
            "plain_prompt_tokens": h.plain_prompt_tokens, "shared_prefix_tokens": h.shared_prefix_tokens,
            "cached_tokens": cached_p, "plain_cached_tokens": cached_0,
        }

    def timings(self) -> Dict[str, float]:
        """Seconds: queued, prefill (to first token), decode (after it), total; decode tokens/s."""
        return self._handle.timings()
