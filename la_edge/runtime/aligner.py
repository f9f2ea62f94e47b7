"""Generation in three layers: steps (token ids) -> stream (text chunks) -> generate (result).

`Aligner.submit` starts one generation and returns its `Request`: stream() its Chunks or take its
result(); stream, generate and the HTTP server are all built on it.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

from .branches import Branch, BranchSet, compose
from ..decoding.combination import Combination, check_cfg_scale
from .engine import Engine, RequestHandle, StepEvent, check_max_branches
from ..errors import InvalidParameterError
from ..decoding.params import GenerationParams
from .prompts import ChatTemplate, PromptPair, raw_pair, select_template, validate_principle
from .request import Chunk, GenerationResult, Request

__all__ = ["Aligner", "BranchSet", "Chunk", "GenerationResult", "Request"]

STOP_TIMEOUT_S = 10.0  # close(): how long the engine may take to stop
STOP_EXTRA_S = 5.0  # then how much longer a decode in flight may run before the model is left unfreed


class Aligner:
    """A loaded model ready for Linear Alignment: the Python API's entry point.

    >>> la = Aligner.load()                      # embedded SmolLM2 unless a path is given
    >>> la.generate("Why is the sky blue?", principle="Explain it to a five-year-old.").text
    """

    def __init__(self, engine: Engine, chat_template: Optional[str] = None,
                 chat_template_file: Optional[str] = None):
        self.engine = engine
        self.backend = engine.backend
        self._template: Optional[ChatTemplate] = None
        self._template_choice = (chat_template, chat_template_file)
        if chat_template is not None or chat_template_file is not None:
            self.template  # an unknown name or unreadable file fails here, at load
        self._closed = False
        self.memory = None  # the KV cache's KvPlan (runtime/memory.py); None where the backend grows its cache

    @classmethod
    def load(cls, model_path: Optional[str] = None, n_ctx: int = 4096, n_batch: int = 512,
             max_requests: int = 1, n_threads: Optional[int] = None, n_gpu_layers: int = 0,
             flash_attn: bool = False, kv_unified: bool = False, prefer_native: bool = True,
             verbose: bool = False, backend: str = "auto", providers: Optional[Sequence[str]] = None,
             max_queue: int = 16, chat_template: Optional[str] = None,
             chat_template_file: Optional[str] = None, prompt_cache: bool = True,
             max_branches: int = 4, kv_budget: Union[None, int, str] = None, kv_type: str = "f16",
             fixed: Sequence[str] = ()) -> "Aligner":
        """Load a model (default: the embedded SmolLM2-135M-Instruct Q4_1 GGUF).

        backend: "auto" (ONNX for an exported folder, llama.cpp for a .gguf), "llama.cpp" or "onnx".
        n_ctx is the context of each sequence; a request uses one sequence per branch (two for a
        principle, one more per extra principle or thing to avoid), at most max_branches, so the
        context holds max_requests x max_branches sequences.
        chat_template: a llama.cpp built-in template name (or Jinja text) instead of the model's own;
        chat_template_file: a Jinja template file.
        prompt_cache: keep finished requests' sequences in the KV cache and reuse their longest common
        token prefix (a conversation's next turn prefills only the new tokens); False turns it off.
        kv_budget: bytes (or "1.5GiB", or "auto": memory.AUTO_SHARE of the memory available) the KV cache
        may take; max_requests, max_branches and n_ctx are then the most wanted, lowered in that order to
        fit (runtime/memory.py), except those named in `fixed` ("max_requests", "n_ctx"), which the
        budget only checks (a warning when over). kv_type: "f16", "q8_0" or "q4_0" (flash attention on).
        """
        from ..backends import BackendOptions, kv_shape, load_backend
        from ..backends.models import resolve_model
        from . import memory

        check_max_branches(max_branches)
        if not isinstance(max_requests, int) or isinstance(max_requests, bool) or max_requests < 1:
            raise InvalidParameterError(f"max_requests must be a positive integer, got {max_requests!r}")
        budget = memory.resolve_budget(kv_budget)
        chosen = None
        if budget is not None:
            model_path = resolve_model(model_path)
            shape = kv_shape(model_path, backend)
            if shape is None and memory.parse_size(kv_budget) != memory.AUTO:
                raise InvalidParameterError("--kv-budget sizes a llama.cpp KV cache; the ONNX backend grows its "
                                            "cache with the tokens (leave --kv-budget unset or auto)")
            if shape is not None:
                chosen = memory.plan(budget, shape, kv_type, max_requests, max_branches, n_ctx, fixed,
                                     n_ubatch=n_batch, unified=kv_unified)
                if chosen.warning:
                    warnings.warn(f"la_edge: {chosen.warning}", RuntimeWarning, stacklevel=2)
                max_requests, max_branches, n_ctx = chosen.max_requests, chosen.max_branches, chosen.n_ctx
        options = BackendOptions(n_ctx=n_ctx, n_batch=n_batch, n_seq_max=max_requests * max_branches,
                                 n_threads=n_threads,
                                 n_gpu_layers=n_gpu_layers, flash_attn=flash_attn, kv_unified=kv_unified,
                                 verbose=verbose, providers=tuple(providers) if providers else None,
                                 kv_type=kv_type)
        b = load_backend(model_path, backend, options)
        try:
            engine = Engine(b, max_requests=max_requests, max_queue=max_queue, prefer_native=prefer_native,
                            prompt_cache=prompt_cache, max_branches=max_branches)
            la = cls(engine, chat_template=chat_template, chat_template_file=chat_template_file)
            if b.kv_shape is not None:
                la.memory = chosen or memory.plan(None, b.kv_shape, kv_type, max_requests, max_branches, n_ctx,
                                                  n_ubatch=n_batch, unified=kv_unified)
            return la
        except BaseException:
            b.close()
            raise

    @property
    def template(self) -> ChatTemplate:
        if self._template is None:
            with self.engine.lease() as b:
                self._template = select_template(b, *self._template_choice)
        return self._template

    @property
    def sampler(self) -> str:
        """The sampler in use: "native" (the C fast path) or "numpy"."""
        return self.engine.chooser.path

    @property
    def chooser(self):
        """The sampler object: choose(rows, combination, params, rng, history) -> Choice."""
        return self.engine.chooser

    @property
    def max_branches(self) -> int:
        return self.engine.max_branches

    @property
    def model_path(self) -> str:
        """The loaded model: a .gguf file or an exported ONNX folder."""
        return self.backend.path

    @property
    def n_ctx(self) -> int:
        """The context window of one sequence (prompt + answer, per branch)."""
        return self.backend.n_ctx

    @property
    def steps_done(self) -> int:
        """Decode calls the engine made so far (one batch each)."""
        return self.engine.steps

    def tokenize(self, text: str) -> List[int]:
        """Tokens of a rendered prompt string, counted as the engine counts a prompt."""
        return self.engine.tokenize_prompt(text)

    def profile(self, reset: bool = False) -> Dict[str, float]:
        """Host time per decode step: steps, tokens, decode_s, choose_s, host_s, wall_s and per-step ms."""
        return self.engine.profile(reset)

    def prompts(self, prompt: Optional[str] = None, principle: Optional[str] = None,
                system: Optional[str] = None, messages: Optional[Sequence[Dict[str, str]]] = None) -> PromptPair:
        """The two rendered prompts for a user message (or a message list) and a principle."""
        return self.template.pair(_messages(prompt, system, messages), principle)

    def branches(self, prompt: Optional[str] = None, principles: Sequence[str] = (), *,
                 ratios: Union[float, Sequence[float]] = 2.0, weights: Optional[Sequence[float]] = None,
                 avoid: Sequence[str] = (), avoid_ratios: Union[float, Sequence[float]] = 2.0,
                 adaptive: bool = False, system: Optional[str] = None,
                 messages: Optional[Sequence[Dict[str, str]]] = None,
                 avoid_raw: Sequence[str] = ()) -> BranchSet:
        """A branch set: one branch per principle and per thing to avoid, and the plain prompt.

        ratios / avoid_ratios: one value for all, or one per principle (then per avoid text, then
        per avoid_raw prompt) in order. z = sum_i w_i [z_Pi + r_i (z_Pi - z_0)] - sum_j s_j (z_Nj - z_0);
        one principle is Linear Alignment exactly. With no principle, z = z_0 - sum_j s_j (z_Nj - z_0):
        a negative prompt (classifier-free guidance). avoid texts are placed as a principle would be;
        avoid_raw are whole raw prompts (control-token strings parsed), as TabbyAPI's negative_prompt.
        """
        principles, avoid, avoid_raw = list(principles), list(avoid), list(avoid_raw)
        if not principles and not avoid and not avoid_raw:
            raise InvalidParameterError("give at least one principle or one thing to avoid")
        for j, text in enumerate(avoid_raw):
            if not isinstance(text, str) or not text:
                raise InvalidParameterError(f"avoid_raw[{j}] (a raw negative prompt) must be a non-empty string")
        ratios = _per_item("ratio", ratios, len(principles))
        avoid_ratios = _per_item("avoid_ratio", avoid_ratios, len(avoid) + len(avoid_raw))
        rendered = [self.prompts(prompt, validate_principle(t), system, messages) for t in principles + avoid]
        if rendered:
            plain = (rendered[0].plain, rendered[0].plain_parts)
        else:  # only raw negatives: the plain prompt is the request rendered with no principle
            alone = self.prompts(prompt, None, system, messages)
            plain = (alone.principled, alone.principled_parts)
        return compose([(p.principled, p.principled_parts) for p in rendered[:len(principles)]],
                       [(p.principled, p.principled_parts) for p in rendered[len(principles):]]
                       + [(t, None) for t in avoid_raw],
                       plain, ratios, weights, avoid_ratios, adaptive)

    def unconditional_prompt(self) -> str:
        """The negative prompt when none is given: the BOS token alone (TabbyAPI's default)."""
        with self.engine.lease() as b:
            bos = b.bos_eos_text()[0]
        if not bos:
            raise InvalidParameterError("negative_prompt: this model has no BOS token to stand for an empty "
                                        "negative prompt; give one")
        return bos

    def negative(self, prompt: Optional[str] = None, negative: Optional[str] = None, *,
                 negative_raw: Optional[str] = None, cfg_scale: float = 3.0, system: Optional[str] = None,
                 messages: Optional[Sequence[Dict[str, str]]] = None) -> BranchSet:
        """Classifier-free guidance: z = z_pos + (cfg_scale - 1)(z_pos - z_neg), nucleus from z_pos.

        The positive prompt is the plain one. negative: what to steer away from, placed as a principle
        would be; negative_raw: a whole raw negative prompt (TabbyAPI's `negative_prompt`); neither:
        the BOS token alone (TabbyAPI's default). cfg_scale in [1, 101]; 1 decodes the prompt alone.
        """
        scale = check_cfg_scale(cfg_scale)
        if negative is not None and negative_raw is not None:
            raise InvalidParameterError("give negative (text placed as a principle) or negative_raw (a whole prompt), "
                                        "not both")
        if scale == 1.0:
            pair = self.prompts(prompt, None, system, messages)
            return BranchSet.from_pair(pair, 0.0)
        if negative is not None:
            return self.branches(prompt, (), avoid=[negative], avoid_ratios=scale - 1.0, system=system,
                                 messages=messages)
        if negative_raw is None:
            negative_raw = self.unconditional_prompt()
        return self.branches(prompt, (), avoid_raw=[negative_raw], avoid_ratios=scale - 1.0, system=system,
                             messages=messages)

    def documents(self, prompt: Optional[str] = None, documents: Sequence[str] = (), *, ratio: float = 1.0,
                  adaptive: bool = False, system: Optional[str] = None,
                  messages: Optional[Sequence[Dict[str, str]]] = None, at: Optional[int] = None,
                  reference: str = "headers") -> BranchSet:
        """Context-aware decoding: answers that follow the documents rather than the model's memory.

        The principled branch's last user message (or `messages[at]`, a user message earlier in the
        conversation) starts with the documents ("Document 1:\n..."). The plain branch keeps the
        headers with empty bodies (reference "headers", the default: the branches differ only by the
        documents' text, so CAD does not amplify the headers) or has no documents ("none": CAD as
        published). z = z_D + r (z_D - z_0); adaptive scales r by s_t = JSD(p_D || p_0) in bits per
        token (AdaCAD's weight when r = 1).
        """
        if reference not in ("headers", "none"):
            raise InvalidParameterError(f"reference must be 'headers' or 'none', got {reference!r}")
        docs = list(documents) if not isinstance(documents, str) else [documents]
        if not docs:
            raise InvalidParameterError("documents must hold at least one document")
        for i, d in enumerate(docs):
            if not isinstance(d, str) or not d.strip():
                raise InvalidParameterError(f"documents[{i}] must be a non-empty string")
        messages = [dict(m) for m in _messages(prompt, system, messages)]
        users = [k for k, m in enumerate(messages) if m.get("role") == "user"]
        if not users:
            raise InvalidParameterError("documents need a user message to go with")
        if at is not None and (isinstance(at, bool) or not isinstance(at, int) or at not in users):
            raise InvalidParameterError(f"at must be the index of a user message (one of {users}), got {at!r}")
        at = users[-1] if at is None else at

        def put(bodies: Sequence[str]) -> List[Dict[str, str]]:
            head = "".join(f"Document {i + 1}:\n{b.strip()}\n\n" for i, b in enumerate(bodies))
            return messages[:at] + [dict(messages[at], content=head + str(messages[at]["content"]))] + messages[at + 1:]

        d = self.template.pair(put(docs), None)
        plain = self.template.pair(put([""] * len(docs)) if reference == "headers" else messages, None)
        combo = dataclasses.replace(Combination.linear_alignment(ratio), adaptive=adaptive)
        return BranchSet((Branch(d.principled, d.principled_parts),
                          Branch(plain.principled, plain.principled_parts, "plain")), combo)

    # ---- generation --------------------------------------------------------------------------
    def submit(self, prompt: Optional[str] = None, principle: Optional[str] = None,
               params: Optional[GenerationParams] = None, *, system: Optional[str] = None,
               messages: Optional[Sequence[Dict[str, str]]] = None, pair: Optional[PromptPair] = None,
               principles: Optional[Sequence[str]] = None, branches: Optional[BranchSet] = None) -> Request:
        """Start one generation and return its Request (stream it, or wait for its result).

        Give a prompt (with an optional system text) or a message list with one principle (Linear
        Alignment at params.ratio) or several (`principles`, each at params.ratio, equal weights);
        or a ready PromptPair or BranchSet (see branches()). Raises InvalidParameterError,
        ContextOverflowError, BusyError or EngineUnavailableError at once.
        """
        params = params or GenerationParams()
        if principles is not None:
            if principle is not None:
                raise InvalidParameterError("give principle or principles, not both")
            branches = self.branches(prompt, principles, ratios=params.ratio, system=system, messages=messages)
        if branches is not None:
            handle, prompts = self.engine.submit(branches, params), branches.describe()
        else:
            pair = pair or self.prompts(prompt, principle, system, messages)
            handle, prompts = self.engine.submit(pair, params), {"principled": pair.principled, "plain": pair.plain}
        return Request(handle, prompts, params, self.sampler)

    def steps(self, pair: Union[PromptPair, BranchSet],
              params: GenerationParams) -> Tuple[RequestHandle, Iterator[StepEvent]]:
        """Layer 1: submit and iterate token ids with diagnostics."""
        handle = self.engine.submit(pair, params)
        return handle, iter(handle)

    def stream(self, prompt: Optional[str] = None, principle: Optional[str] = None,
               params: Optional[GenerationParams] = None, **kw) -> Iterator[Chunk]:
        """Layer 2: stream text chunks of the aligned answer (keywords as submit())."""
        return self.submit(prompt, principle, params, **kw).stream()

    def generate(self, prompt: Optional[str] = None, principle: Optional[str] = None,
                 params: Optional[GenerationParams] = None, **kw) -> GenerationResult:
        """Layer 3: the whole aligned answer with prompts, usage and timings (keywords as submit())."""
        return self.submit(prompt, principle, params, **kw).result()

    def generate_raw(self, principled_prompt: str, plain_prompt: Optional[str],
                     params: Optional[GenerationParams] = None) -> GenerationResult:
        """Raw-prompt mode: both prompt strings given explicitly, no chat template."""
        return self.generate(params=params, pair=raw_pair(principled_prompt, plain_prompt))

    # ---- tokens ------------------------------------------------------------------------------
    def token_text(self, token: int) -> str:
        return self.token_bytes(token).decode("utf-8", "replace")

    def token_bytes(self, token: int) -> bytes:
        """The token's own bytes (a piece of a UTF-8 character for some tokens)."""
        return self.engine.token_bytes(token)

    # ---- lifecycle ---------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        """False once the engine stopped or failed: every submit then raises EngineUnavailableError."""
        return self.engine.alive

    def status(self) -> Dict[str, object]:
        """Engine state for health checks: alive, failure (text or None), active, queued, sampler,
        max_branches, n_seq_max, prompt_cache, kv (cells in use and free, see Engine.kv_stats)."""
        e = self.engine
        failure = e.failure
        return {"alive": e.alive, "failure": repr(failure) if failure is not None else None,
                "active": e.n_active, "queued": e.n_queued, "sampler": e.chooser.path,
                "max_branches": e.max_branches, "n_seq_max": self.backend.n_seq_max,
                "prompt_cache": e.cache_stats(), "kv": e.kv_stats()}

    def start(self) -> None:
        """Kept for callers of earlier versions: the engine's thread runs from load."""
        self.engine.start()

    def cancel_all(self) -> int:
        """Cancel every open request; returns how many were still running."""
        return self.engine.cancel_all()

    def close(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop the engine (its open requests end as cancelled), then free the model.

        The model is freed only when no decode is in flight and no vocabulary call runs; after a
        bounded extra wait it is left allocated (a RuntimeWarning says so) rather than freed under one.
        """
        if self._closed:
            return
        self._closed = True
        clean = self.engine.stop(timeout) or self.engine.stop(STOP_EXTRA_S)
        if clean:
            self.engine.backend_freed = True  # later queries raise instead of reading freed memory
            self.backend.close()
        else:
            warnings.warn(f"la_edge: a decode was still running {timeout + STOP_EXTRA_S:g} s after close(); "
                          "the model is not freed (the process releases it at exit)", RuntimeWarning, stacklevel=2)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _messages(prompt: Optional[str], system: Optional[str],
              messages: Optional[Sequence[Dict[str, str]]]) -> Sequence[Dict[str, str]]:
    """The message list of a request: `messages` as given, else the prompt (after the system text)."""
    if messages is not None:
        return messages
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidParameterError("prompt must be a non-empty string")
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


def _per_item(name: str, value: Union[float, Sequence[float]], n: int) -> List[float]:
    """One value for all n items, or exactly one per item."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)] * n
    values = [float(v) for v in value]
    if len(values) != n:
        raise InvalidParameterError(f"{name}: give one value for all or one per item ({n}), got {len(values)}")
    return values
