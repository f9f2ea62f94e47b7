"""Generation in three layers: steps (token ids) -> stream (text chunks) -> generate (result)."""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from .engine import Engine, RequestHandle, StepEvent
from ..errors import InvalidParameterError
from ..decoding.params import GenerationParams
from .prompts import ChatTemplate, PromptPair, raw_pair


@dataclass(frozen=True)
class Chunk:
    """A piece of streamed output: `text` is new text (never a split UTF-8 character)."""

    text: str
    token: Optional[int]
    logprob: Optional[float] = None
    top: Tuple[Tuple[int, float], ...] = ()
    finish_reason: Optional[str] = None


@dataclass
class GenerationResult:
    """The whole answer with what produced it."""

    text: str
    tokens: List[int]
    prompts: Dict[str, Optional[str]]
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


class _StopFilter:
    """Finds stop strings across token boundaries; holds back text that may begin one."""

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(stops)
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.text = ""
        self.emitted = 0

    def push(self, new: str) -> Tuple[str, bool]:
        """Add decoded text; return (text safe to emit, whether a stop string was hit)."""
        start = max(0, len(self.text) - self.hold)
        self.text += new
        hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            return self._take(len(self.text)), True
        safe = len(self.text)
        for s in self.stops:  # keep back a suffix that is a prefix of a stop string
            for k in range(min(len(s) - 1, len(self.text)), 0, -1):
                if self.text.endswith(s[:k]):
                    safe = min(safe, len(self.text) - k)
                    break
        return self._take(safe), False

    def flush(self) -> str:
        return self._take(len(self.text))

    def _take(self, upto: int) -> str:
        out = self.text[self.emitted: upto]
        self.emitted = max(self.emitted, upto)
        return out


def stream_steps(handle: RequestHandle, engine: Engine, params: GenerationParams) -> Iterator[Chunk]:
    """Turn a request's StepEvents into text Chunks, applying stop strings."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    stop = _StopFilter(params.stop)
    backend = engine.backend
    try:
        for ev in handle:
            piece = b"" if backend.is_eog(ev.token) else backend.token_bytes(ev.token)
            text, hit = stop.push(decoder.decode(piece, final=ev.finish_reason is not None))
            if hit:
                handle.cancel()
                yield Chunk(text, ev.token, ev.logprob, ev.top, "stop")
                return
            if ev.finish_reason is not None:
                text += stop.flush()
            yield Chunk(text, ev.token, ev.logprob, ev.top, ev.finish_reason)
    finally:
        handle.cancel()  # frees both sequences if the consumer stops early


def collect(chunks: Iterator[Chunk], handle: RequestHandle, pair: PromptPair, sampler: str,
            token_text) -> GenerationResult:
    """Drain a stream into a GenerationResult."""
    parts: List[str] = []
    tokens: List[int] = []
    logprobs: List[Dict[str, object]] = []
    reason = "length"
    for c in chunks:
        parts.append(c.text)
        if c.token is not None:
            tokens.append(c.token)
            logprobs.append({
                "token": c.token, "text": token_text(c.token), "logprob": c.logprob,
                "top": [{"token": t, "text": token_text(t), "logprob": lp} for t, lp in c.top],
            })
        if c.finish_reason:
            reason = c.finish_reason
    completion = len(tokens)
    usage = {
        "prompt_tokens": handle.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": handle.prompt_tokens + completion,
        "plain_prompt_tokens": handle.plain_prompt_tokens,
        "shared_prefix_tokens": handle.shared_prefix_tokens,
    }
    return GenerationResult(
        text="".join(parts), tokens=tokens, prompts={"principled": pair.principled, "plain": pair.plain},
        finish_reason=reason, usage=usage, timings=handle.timings(), seed=handle.seed, sampler=sampler,
        logprobs=logprobs)


class Aligner:
    """A loaded model ready for Linear Alignment: the Python API's entry point.

    >>> la = Aligner.load()                      # embedded SmolLM2 unless a path is given
    >>> la.generate("Why is the sky blue?", principle="Explain it to a five-year-old.").text
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self.backend = engine.backend
        self._template: Optional[ChatTemplate] = None

    @classmethod
    def load(cls, model_path: Optional[str] = None, n_ctx: int = 4096, n_batch: int = 512,
             max_requests: int = 1, n_threads: Optional[int] = None, n_gpu_layers: int = 0,
             flash_attn: bool = False, kv_unified: bool = False, prefer_native: bool = True,
             verbose: bool = False, backend: str = "auto", providers: Optional[Sequence[str]] = None,
             max_queue: int = 16) -> "Aligner":
        """Load a model (default: the embedded SmolLM2-135M-Instruct Q4_1 GGUF).

        backend: "auto" (ONNX for an exported folder, llama.cpp for a .gguf), "llama.cpp" or "onnx".
        n_ctx is the context of each sequence; a request with a principle uses two sequences.
        """
        from ..backends import BackendOptions, load_backend

        options = BackendOptions(n_ctx=n_ctx, n_batch=n_batch, n_seq_max=2 * max_requests, n_threads=n_threads,
                                 n_gpu_layers=n_gpu_layers, flash_attn=flash_attn, kv_unified=kv_unified,
                                 verbose=verbose, providers=tuple(providers) if providers else None)
        b = load_backend(model_path, backend, options)
        try:
            engine = Engine(b, max_requests=max_requests, max_queue=max_queue, prefer_native=prefer_native)
        except BaseException:
            b.close()
            raise
        return cls(engine)

    @property
    def template(self) -> ChatTemplate:
        if self._template is None:
            bos, eos = self.backend.bos_eos_text()
            self._template = ChatTemplate(self.backend.chat_template(), bos=bos, eos=eos)
        return self._template

    def prompts(self, prompt: Optional[str] = None, principle: Optional[str] = None,
                system: Optional[str] = None, messages: Optional[Sequence[Dict[str, str]]] = None) -> PromptPair:
        """The two rendered prompts for a user message (or a message list) and a principle."""
        if messages is None:
            if not isinstance(prompt, str) or not prompt.strip():
                raise InvalidParameterError("prompt must be a non-empty string")
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": prompt}]
        return self.template.pair(messages, principle)

    def steps(self, pair: PromptPair, params: GenerationParams) -> Tuple[RequestHandle, Iterator[StepEvent]]:
        """Layer 1: submit and iterate token ids with diagnostics."""
        handle = self.engine.submit(pair, params)
        return handle, iter(handle)

    def stream(self, prompt: Optional[str] = None, principle: Optional[str] = None,
               params: Optional[GenerationParams] = None, *, system: Optional[str] = None,
               messages=None, pair: Optional[PromptPair] = None) -> Iterator[Chunk]:
        """Layer 2: stream text chunks of the aligned answer."""
        params = params or GenerationParams()
        pair = pair or self.prompts(prompt, principle, system, messages)
        handle = self.engine.submit(pair, params)
        return stream_steps(handle, self.engine, params)

    def generate(self, prompt: Optional[str] = None, principle: Optional[str] = None,
                 params: Optional[GenerationParams] = None, *, system: Optional[str] = None,
                 messages=None, pair: Optional[PromptPair] = None) -> GenerationResult:
        """Layer 3: the whole aligned answer with prompts, usage and timings."""
        params = params or GenerationParams()
        pair = pair or self.prompts(prompt, principle, system, messages)
        handle = self.engine.submit(pair, params)
        return collect(stream_steps(handle, self.engine, params), handle, pair,
                       self.engine.chooser.path, self.token_text)

    def generate_raw(self, principled_prompt: str, plain_prompt: Optional[str],
                     params: Optional[GenerationParams] = None) -> GenerationResult:
        """Raw-prompt mode: both prompt strings given explicitly, no chat template."""
        return self.generate(params=params, pair=raw_pair(principled_prompt, plain_prompt))

    def token_text(self, token: int) -> str:
        return self.backend.token_bytes(token).decode("utf-8", "replace")

    def close(self) -> None:
        self.engine.stop()
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
