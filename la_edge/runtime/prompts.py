"""The two prompts of a request: with the principle (z_P) and without it (z_0).

Rendered with the model's own chat template through llama-cpp-python's Jinja2 formatter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import ChatTemplateError, InvalidParameterError

_SYS = "\x00LA_EDGE_SYSTEM\x00"
_USER = "\x00LA_EDGE_USER\x00"
PRINCIPLE_SEPARATOR = " "  # principle follows the base system text, as in the authors' demo


@dataclass(frozen=True)
class PromptPair:
    """The exact strings of both branches; `plain` is None when there is no principle."""

    principled: str
    plain: Optional[str]


def _validate_messages(messages: Sequence[Dict[str, str]]) -> List[Dict[str, str]]:
    if not messages:
        raise InvalidParameterError("messages must not be empty")
    out = []
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise InvalidParameterError("each message needs 'role' and 'content'")
        if not isinstance(m["content"], str):
            raise InvalidParameterError("message content must be a string")
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "user" and m["content"].strip() for m in out):
        raise InvalidParameterError("messages must contain a non-empty user message")
    return out


def validate_principle(principle: Optional[str]) -> Optional[str]:
    """None means no principle; an empty or blank string is an error."""
    if principle is None:
        return None
    if not isinstance(principle, str) or not principle.strip():
        raise InvalidParameterError("principle must be a non-empty string (omit it for plain decoding)")
    return principle


class ChatTemplate:
    """A model's Jinja chat template with its system-message behaviour probed once."""

    def __init__(self, template: Optional[str], bos: str = "", eos: str = ""):
        if not template:
            raise ChatTemplateError(
                "the model has no chat template in its GGUF metadata; use raw-prompt mode "
                "(principled_prompt / plain_prompt) or pass a template")
        try:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            self._fmt = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
        except Exception as exc:  # jinja2 syntax errors and the like
            raise ChatTemplateError(f"the model's chat template does not parse: {exc}") from exc
        self.template = template
        self.supports_system, self.default_system = self._probe()

    def render(self, messages: Sequence[Dict[str, str]]) -> str:
        try:
            return self._fmt(messages=list(messages)).prompt
        except Exception as exc:
            raise ChatTemplateError(f"chat template failed to render: {exc}") from exc

    def _probe(self):
        plain = self.render([{"role": "user", "content": _USER}])
        try:
            with_sys = self.render([{"role": "system", "content": _SYS}, {"role": "user", "content": _USER}])
        except ChatTemplateError:
            return False, None
        if _SYS not in with_sys:
            return False, None
        head, tail = with_sys.split(_SYS, 1)
        # The template injects a default system text iff the plain render fills the same slot.
        if plain.startswith(head) and plain.endswith(tail) and len(plain) >= len(head) + len(tail):
            default = plain[len(head): len(plain) - len(tail)]
            return True, default or None
        return True, None

    def pair(self, messages: Sequence[Dict[str, str]], principle: Optional[str]) -> PromptPair:
        """Render both branches; they differ only by the principle."""
        messages = _validate_messages(messages)
        principle = validate_principle(principle)
        plain = self.render(messages)
        if principle is None:
            return PromptPair(principled=plain, plain=None)
        if self.supports_system:
            if messages[0]["role"] == "system":
                base = messages[0]["content"]
                rest = messages[1:]
            else:
                base, rest = self.default_system, messages
            system = principle if not base else base + PRINCIPLE_SEPARATOR + principle
            principled = self.render([{"role": "system", "content": system}] + list(rest))
        else:
            # No system role: the principle goes before the first user turn.
            i = next(k for k, m in enumerate(messages) if m["role"] == "user")
            changed = dict(messages[i], content=principle + "\n\n" + messages[i]["content"])
            principled = self.render(messages[:i] + [changed] + messages[i + 1:])
        return PromptPair(principled=principled, plain=plain)


def tokenize_text(backend, text: str) -> List[int]:
    """Tokens of one rendered prompt, with BOS added only where the model wants it and the text lacks it."""
    bos, _ = backend.bos_eos_text()
    add = backend.add_bos() and not (bos and text.startswith(bos))
    return backend.tokenize(text, add_special=add)


def tokenize_pair(backend, pair: PromptPair) -> Tuple[List[int], Optional[List[int]]]:
    """Token ids of both branches (plain is None without a principle)."""
    tokens_p = tokenize_text(backend, pair.principled)
    tokens_0 = tokenize_text(backend, pair.plain) if pair.plain is not None else None
    return tokens_p, tokens_0


def raw_pair(principled_prompt: str, plain_prompt: Optional[str]) -> PromptPair:
    """Raw-prompt mode: both strings given explicitly (no template)."""
    if not isinstance(principled_prompt, str) or not principled_prompt:
        raise InvalidParameterError("principled prompt must be a non-empty string")
    if plain_prompt is not None and (not isinstance(plain_prompt, str) or not plain_prompt):
        raise InvalidParameterError("plain prompt must be a non-empty string or None")
    return PromptPair(principled=principled_prompt, plain=plain_prompt)
