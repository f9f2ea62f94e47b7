"""The server's request side: checked JSON (body.py) -> request model -> Aligner.submit arguments.

Every face's body becomes one of these models (Ollama's is rewritten into them first). Wrong types
are 422 (pydantic, strict: no "1" for 1); wrong values are 400. Generation fields come from
flags.PARAMS, the one table of HTTP names, and become GenerationParams through flags.params_from_fields.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from ..decoding.params import GenerationParams
from ..errors import InvalidParameterError
from ..runtime.prompts import raw_pair, validate_principle
from .body import RequestError
from .flags import PARAMS, params_from_fields
from .presets import PRINCIPLE_FROM, Steering
from ..runtime.spec import PrincipleSpec, SpecError

PART_SEPARATOR = "\n"  # text parts of one message are joined with a newline


# ---- models ----------------------------------------------------------------------------------
class Defaults(NamedTuple):
    """What the server fills in for a request that leaves a field out."""

    max_tokens: int = 256
    timeout: Optional[float] = None  # seconds
    ratio: Optional[float] = None  # alignment_ratio of a request that brings none (serve --ratio)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class Message(_Strict):
    role: str
    content: Union[str, List[Dict[str, Any]]]  # a string or OpenAI content parts (text only)


class _Envelope(_Strict):
    """OpenAI fields that are not generation parameters, plus the `principle` extensions
    (`principles`, `avoid` and `ratio_schedule` are checked by faces.principles, naming the field)."""

    model: Optional[str] = None
    n: int = 1
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    stop: Optional[Union[str, List[str]]] = None
    user: Optional[str] = None
    principle: Optional[str] = None
    principles: Optional[Any] = None  # [{text, ratio, weight}]
    avoid: Optional[Any] = None  # [{text, ratio}]
    ratio_schedule: Optional[Any] = None  # "fixed" | "adaptive"
    principle_from: Optional[Any] = None  # "system" | "none" (checked by _Request, naming the field)
    # TabbyAPI's classifier-free guidance: a raw negative prompt, its scale (1 = off; alias guidance_scale)
    negative_prompt: Optional[Any] = None
    cfg_scale: Optional[Any] = None
    guidance_scale: Optional[Any] = None
    documents: Optional[Any] = None  # [text, ...]: context-aware decoding (chat)
    document_ratio: Optional[Any] = None
    # OpenAI fields la_edge cannot honour beyond their neutral values (see _Request.refuse_unsupported)
    response_format: Optional[Any] = None
    tools: Optional[Any] = None
    tool_choice: Optional[Any] = None
    functions: Optional[Any] = None
    function_call: Optional[Any] = None
    logit_bias: Optional[Any] = None


# Generation parameters: one optional field per flags.PARAMS entry with an HTTP name.
_WithParams = create_model("_WithParams", __base__=_Envelope,
                           **{p.http: (Optional[p.type], None) for p in PARAMS if p.http})


class _Request(_WithParams):
    def generation_params(self, defaults: "Defaults", top_logprobs: int,
                          max_tokens: Optional[int] = None) -> GenerationParams:
        """The validated parameters; max_tokens (when given) overrides the body's."""
        self.refuse_unsupported()
        if max_tokens is None:
            max_tokens = self.max_tokens if self.max_tokens is not None else defaults.max_tokens
        stop = _field("stop", _stop, self.stop)
        timeout = defaults.timeout if self.timeout is None else _field("timeout", _timeout, self.timeout)
        ratio = defaults.ratio if self.alignment_ratio is None else None
        return params_from_fields(dict(self), max_tokens=max_tokens, top_logprobs=top_logprobs, stop=stop,
                                  timeout=timeout, ratio=ratio)

    def refuse_unsupported(self) -> None:
        """A 400 (code "unsupported") naming the first field asked for something la_edge does not do;
        neutral values (n 1, response_format text, no tools, an empty logit_bias) pass."""
        fmt = self.response_format
        checks = [("n", self.n == 1, "only n=1 is supported (one choice per request)"),
                  ("response_format", fmt is None or (isinstance(fmt, dict) and fmt.get("type") == "text"),
                   'only {"type": "text"} is supported (no JSON mode or schema)'),
                  ("tools", not self.tools, "tools (function calling) are not supported"),
                  ("tool_choice", self.tool_choice in (None, "none", "auto"),
                   "tool_choice: tools (function calling) are not supported"),
                  ("functions", not self.functions, "functions (function calling) are not supported"),
                  ("function_call", self.function_call in (None, "none", "auto"),
                   "function_call: functions (function calling) are not supported"),
                  ("logit_bias", not self.logit_bias, "logit_bias is not supported (send null or {})")]
        checks += self._more_unsupported()
        for name, ok, message in checks:
            if not ok:
                raise RequestError(f"{name}: {message}" if not message.startswith(name) else message,
                                   param=name, code="unsupported")

    def _more_unsupported(self) -> list:
        return []

    def own_spec(self) -> bool:
        """Whether the request names its guidance itself (principle, principles, avoid, a negative prompt,
        documents)."""
        return any(v is not None for v in (self.principle, self.principles, self.avoid)) or self._guides()

    def _guides(self) -> bool:
        """Guidance fields with an effect: a cfg_scale other than 1, or documents. TabbyAPI clients send
        neutral values (guidance_scale 1, negative_prompt "") on every request; those keep a preset."""
        scales = [v for v in (self.cfg_scale, self.guidance_scale) if v is not None]
        return any(v != 1 for v in scales) or bool(self.documents)

    def _guidance(self) -> tuple:
        return (self.negative_prompt, self.cfg_scale, self.guidance_scale, self.documents, self.document_ratio)

    def steered(self, params: GenerationParams, max_branches: int, steering: Optional[Steering],
                messages: Optional[List[Dict[str, str]]]):
        """(spec, messages): the request's own principles, else Steering.choose's (system message,
        preset named by `model`, server default); ratio_schedule alone applies to the chosen ones."""
        if self.principle_from is not None and self.principle_from not in PRINCIPLE_FROM:
            raise RequestError(f"principle_from must be 'system' or 'none', got {self.principle_from!r:.60}",
                               param="principle_from")
        if self.principle_from == "system" and messages is None:
            raise RequestError("principle_from 'system' takes the system message of a chat request; a "
                               "completion has none", param="principle_from")
        if steering is None:
            steering = Steering(self.model or "")
        chosen, kept = steering.choose(self.model, messages, self.principle_from, self.alignment_ratio)
        if self.own_spec() or not chosen.principles:
            return self.spec(params, max_branches), messages
        if self.ratio_schedule is not None:
            chosen = self._checked(lambda: PrincipleSpec.from_fields(
                {**chosen.to_fields(), "ratio_schedule": self.ratio_schedule}))
        self._checked(lambda: chosen.check_branches(max_branches))
        return chosen, kept

    @staticmethod
    def _checked(make):
        try:
            return make()
        except SpecError as exc:
            typed = exc.kind == "type"
            raise RequestError(str(exc), status=422 if typed else 400, param=exc.field,
                               code="invalid_type" if typed else "invalid_value") from None

    def spec(self, params: GenerationParams, max_branches: int) -> PrincipleSpec:
        """What the request aligns to: `principle` (a one-element list) or `principles`, `avoid` and
        `ratio_schedule`; an item without a ratio takes alignment_ratio. Errors name the field."""
        principle = _field("principle", validate_principle, self.principle)
        fields = {"principles": self.principles, "avoid": self.avoid, "ratio_schedule": self.ratio_schedule,
                  **dict(zip(("negative_prompt", "cfg_scale", "guidance_scale", "documents", "document_ratio"),
                             self._guidance()))}
        if principle is not None:
            if self.principles is not None:
                raise RequestError("give principle or principles, not both", param="principles")
            fields["principles"] = [{"text": principle}]
        spec = self._checked(lambda: PrincipleSpec.from_fields(fields, params.ratio))
        self._checked(lambda: spec.check_branches(max_branches))
        return spec

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatRequest(_Request):
    messages: List[Message] = Field(min_length=1)
    max_completion_tokens: Optional[int] = None
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = None

    @property
    def want_logprobs(self) -> bool:
        return bool(self.logprobs)

    def params(self, defaults: "Defaults") -> GenerationParams:
        n_top = (self.top_logprobs or 0) if self.logprobs else 0
        return self.generation_params(defaults, n_top, self.max_completion_tokens)

    def submitter(self, params: GenerationParams, max_branches: int,
                  steering: Optional[Steering] = None) -> Callable[[Any], Any]:
        """Checks the request and returns aligner -> Request: the messages (text parts joined) and the
        principles (see steered)."""
        messages = [{"role": m.role, "content": _content(m, i)} for i, m in enumerate(self.messages)]
        spec, messages = self.steered(params, max_branches, steering, messages)
        return lambda la: spec.submit(la, params, messages=messages)


class CompletionRequest(_Request):
    prompt: str
    logprobs: Optional[int] = None  # alternatives per token
    principled_prompt: Optional[str] = None  # raw mode: the principled branch verbatim
    echo: Optional[Any] = None
    best_of: Optional[Any] = None
    suffix: Optional[Any] = None

    def _more_unsupported(self) -> list:
        return [("echo", self.echo in (None, False), "echo: returning the prompt is not supported"),
                ("best_of", self.best_of in (None, 1), "best_of: only 1 is supported (one choice per request)"),
                ("suffix", self.suffix in (None, ""), "suffix: insertion (fill-in-the-middle) is not supported")]

    def own_spec(self) -> bool:
        return super().own_spec() or self.principled_prompt is not None

    @property
    def want_logprobs(self) -> bool:
        return self.logprobs is not None

    def params(self, defaults: "Defaults") -> GenerationParams:
        return self.generation_params(defaults, self.logprobs or 0)

    def submitter(self, params: GenerationParams, max_branches: int,
                  steering: Optional[Steering] = None) -> Callable[[Any], Any]:
        """Checks the request and returns aligner -> Request: `prompt` is the plain branch; the
        principled branch is `principled_prompt` if given, else each principle (and each text to
        avoid; a preset's or the server default's when the request names none) and the prompt
        joined by a blank line."""
        if not self.prompt:
            raise RequestError("prompt must be a non-empty string", param="prompt")
        spec, _ = self.steered(params, max_branches, steering, None)
        if self.principled_prompt is not None:
            if not self.principled_prompt.strip():
                raise RequestError("principled_prompt must be a non-empty string (omit it to build it from "
                                   "the principle)", param="principled_prompt")
            if spec.principles and spec.single is None:
                raise RequestError("principled_prompt is one raw principled branch: give it without principles, "
                                   "avoid or ratio_schedule", param="principled_prompt")
            pair = raw_pair(self.principled_prompt, self.prompt)
            return lambda la: la.submit(params=params, pair=pair)
        prompt = self.prompt
        return lambda la: spec.submit_raw(la, params, prompt)


def _timeout(seconds: float) -> float:
    return GenerationParams(timeout=seconds).timeout


def _stop(stop) -> Tuple[str, ...]:
    return GenerationParams(stop=stop).stop


def _field(name: str, check, value):
    try:
        return check(value)
    except InvalidParameterError as exc:
        raise RequestError(str(exc), param=name) from None


def _content(m: Message, i: int) -> str:
    if isinstance(m.content, str):
        return m.content
    texts = []
    for j, part in enumerate(m.content):
        where = f"messages[{i}].content[{j}]"
        kind = part.get("type")
        if kind != "text":
            shown = repr(kind) if isinstance(kind, str) and len(kind) <= 40 else "another type"
            raise RequestError(f"{where}: only text content parts are supported (type 'text'), got {shown}",
                               param=where, code="unsupported_content")
        if not isinstance(part.get("text"), str):
            raise RequestError(f"{where}: a text part needs a string field 'text'", param=where)
        texts.append(part["text"])
    return PART_SEPARATOR.join(texts)


def validate(data: Dict[str, Any], model_cls):
    """A validated request model from a checked JSON object (load_body's); raises RequestError (422)."""
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first.get("loc", ()))
        raise RequestError(f"{param}: {first.get('msg')}", status=422, param=param, code="invalid_type") from None
