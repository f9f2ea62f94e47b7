"""The two prompts of a request: with the principle (z_P) and without it (z_0).

Rendered with the model's own chat template through llama-cpp-python's Jinja2 formatter, or with
one of llama.cpp's built-in templates by name (`select_template`).
Message content (and the principle, and the system text) is always tokenized as plain text:
only the template's own markup may produce control tokens, so a user cannot forge a turn.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import ChatTemplateError, InvalidParameterError, check_unicode

_SYS = "LA_EDGE_SYSTEM"
_USER = "LA_EDGE_USER"
PRINCIPLE_SEPARATOR = " "  # principle follows the base system text, as in the authors' demo
ROLES = ("system", "user", "assistant")

Parts = Tuple[Tuple[str, bool], ...]  # (text, is_scaffolding) segments of one rendered prompt


@dataclass(frozen=True)
class PromptPair:
    """The exact strings of both branches; `plain` is None when there is no principle.

    principled_parts / plain_parts split each string into (text, is_scaffolding) segments:
    scaffolding is the template's markup (control tokens allowed), the rest is message content
    (always plain text). None means the caller wrote the whole string (raw-prompt mode).
    """

    principled: str
    plain: Optional[str]
    principled_parts: Optional[Parts] = None
    plain_parts: Optional[Parts] = None

    def __post_init__(self):
        for text, parts in ((self.principled, self.principled_parts), (self.plain, self.plain_parts)):
            if parts is not None and (text is None or "".join(t for t, _ in parts) != text):
                raise InvalidParameterError("prompt parts must join to the prompt string they split")


def _validate_messages(messages: Sequence[Dict[str, str]]) -> List[Dict[str, str]]:
    if not messages:
        raise InvalidParameterError("messages must not be empty")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise InvalidParameterError("each message needs 'role' and 'content'")
        if m["role"] not in ROLES:
            raise InvalidParameterError(
                f"message {i} has role {repr(m['role'])[:40]}; the role must be one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise InvalidParameterError("message content must be a string")
        check_unicode(m["content"], f"message {i} ({m['role']}) content")
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
    check_unicode(principle, "principle")
    return principle


SYSTEM_JOIN = "\n\n"  # several system messages become one principle, joined by a blank line


def system_as_principle(messages: Sequence[Dict[str, str]]) -> Tuple[Optional[str], List[Dict[str, str]]]:
    """`--principle-from system`: (the principle, the messages without their system messages).

    Every system message's content (strings), joined by a blank line, is the principle; None when
    there is none or it is blank (the request is then plain). The principled branch holds it and
    the plain branch does not: submitting the returned messages with this principle is exactly a
    request that sent `principle` and no system message.
    """
    texts = [m["content"] for m in messages if m.get("role") == "system"]
    rest = [m for m in messages if m.get("role") != "system"]
    principle = SYSTEM_JOIN.join(t for t in texts if isinstance(t, str) and t.strip())
    return (principle or None), rest


def _locate(text: str, markup: List[str], order: List[int], contents: List[str]) -> Optional[Parts]:
    """Read `text` as markup[0] c markup[1] c ... with each c the content (or its trim); None if not."""
    parts, pos = [], 0
    for k, mark in enumerate(markup):
        if not text.startswith(mark, pos):
            return None
        parts.append((mark, True))
        pos += len(mark)
        if k == len(order):
            break
        c = contents[order[k]]
        nxt = markup[k + 1]
        for t in dict.fromkeys((c, c.strip(), c.lstrip(), c.rstrip())):  # Jinja's trim is str.strip
            if text.startswith(t + nxt, pos):
                parts.append((t, False))
                pos += len(t)
                break
        else:
            return None
    if pos != len(text):
        return None
    return tuple(p for p in parts if p[0])


class ChatTemplate:
    """A chat template (Jinja text, or a llama.cpp built-in by `name`) with its system-message
    behaviour probed once. `source` says where it came from, `placement` where the principle goes."""

    def __init__(self, template: Optional[str], bos: str = "", eos: str = "", *, name: Optional[str] = None,
                 source: str = "gguf"):
        self.name, self.source, self.template = name, source, template
        if name is not None:
            from ..backends.llamacpp_templates import apply_builtin_template

            # Built-ins are C strings: placeholders use a private-use mark instead of NUL.
            self._mark = "\ue000"
            self._fmt = lambda messages: apply_builtin_template(name, messages)
        else:
            if not template:
                raise ChatTemplateError(
                    "the model has no chat template in its GGUF metadata; name one of llama.cpp's built-in "
                    "templates (--chat-template NAME; `la-edge doctor --json` lists them), give a Jinja file "
                    "(--chat-template-file), or use raw-prompt mode (principled_prompt / plain_prompt)")
            try:
                from llama_cpp.llama_chat_format import Jinja2ChatFormatter

                jinja = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
            except Exception as exc:  # jinja2 syntax errors and the like
                raise ChatTemplateError(f"the chat template does not parse: {exc}") from exc
            self._mark = "\x00"
            self._fmt = lambda messages: jinja(messages=messages).prompt
        self._content = re.compile(re.escape(self._mark) + "LA_EDGE_CONTENT_([0-9]+)" + re.escape(self._mark))
        self.supports_system, self.default_system = self._probe()
        self.placement = self._placement()

    def render(self, messages: Sequence[Dict[str, str]]) -> str:
        try:
            return self._fmt(list(messages))
        except Exception as exc:
            raise ChatTemplateError(f"chat template failed to render: {exc}") from exc

    def render_parts(self, messages: Sequence[Dict[str, str]]) -> Tuple[str, Parts]:
        """The rendered prompt and its (text, is_scaffolding) segments.

        The template is rendered a second time with a placeholder for each non-empty content; the
        text between placeholders is the scaffolding. Raises ChatTemplateError when the template
        changes content beyond trimming whitespace, so that content cannot be told from markup.
        """
        text = self.render(messages)
        mark = self._mark
        probe = self.render([dict(m, content=f"{mark}LA_EDGE_CONTENT_{i}{mark}" if m["content"] else "")
                             for i, m in enumerate(messages)])
        pieces = self._content.split(probe)
        parts = _locate(text, pieces[0::2], [int(i) for i in pieces[1::2]], [m["content"] for m in messages])
        if parts is None:
            raise ChatTemplateError(
                "the chat template rewrites message content (beyond trimming whitespace), so la_edge "
                "cannot keep the content apart from the template's control tokens; use raw-prompt mode")
        return text, parts

    def _probe(self):
        sys_, user = self._mark + _SYS + self._mark, self._mark + _USER + self._mark
        plain = self.render([{"role": "user", "content": user}])
        try:
            with_sys = self.render([{"role": "system", "content": sys_}, {"role": "user", "content": user}])
        except ChatTemplateError:
            return False, None
        if sys_ not in with_sys:
            return False, None
        head, tail = with_sys.split(sys_, 1)
        # The template injects a default system text iff the plain render fills the same slot.
        if plain.startswith(head) and plain.endswith(tail) and len(plain) >= len(head) + len(tail):
            default = plain[len(head): len(plain) - len(tail)]
            return True, default or None
        return True, None

    def _placement(self) -> str:
        """'system message', or 'before the first user turn' for families with no system role."""
        if not self.supports_system:
            return "before the first user turn"
        sys_, user = self._mark + _SYS + self._mark, self._mark + _USER + self._mark
        text = self.render([{"role": "system", "content": sys_}, {"role": "user", "content": user}])
        between = text[text.index(sys_) + len(sys_): text.find(user)] if user in text else "?"
        return "before the first user turn" if not between.strip() else "system message"

    def pair(self, messages: Sequence[Dict[str, str]], principle: Optional[str]) -> PromptPair:
        """Render both branches; they differ only by the principle."""
        messages = _validate_messages(messages)
        principle = validate_principle(principle)
        plain, plain_parts = self.render_parts(messages)
        if principle is None:
            return PromptPair(principled=plain, plain=None, principled_parts=plain_parts)
        if self.supports_system:
            if messages[0]["role"] == "system":
                base = messages[0]["content"]
                rest = messages[1:]
            else:
                base, rest = self.default_system, messages
            system = principle if not base else base + PRINCIPLE_SEPARATOR + principle
            principled, parts = self.render_parts([{"role": "system", "content": system}] + list(rest))
        else:
            # No system role: the principle goes before the first user turn.
            i = next(k for k, m in enumerate(messages) if m["role"] == "user")
            changed = dict(messages[i], content=principle + "\n\n" + messages[i]["content"])
            principled, parts = self.render_parts(messages[:i] + [changed] + messages[i + 1:])
        return PromptPair(principled=principled, plain=plain, principled_parts=parts, plain_parts=plain_parts)


def builtin_templates() -> List[str]:
    """The chat template names built into this llama.cpp, read from it (never copied)."""
    from ..backends.llamacpp_templates import builtin_chat_templates

    return builtin_chat_templates()


def select_template(backend, chat_template: Optional[str] = None,
                    chat_template_file: Optional[str] = None) -> ChatTemplate:
    """The template for a model: a Jinja file, a built-in name or Jinja text, else the GGUF's own."""
    bos, eos = backend.bos_eos_text()
    if chat_template_file is not None:
        try:
            with open(chat_template_file, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ChatTemplateError(f"cannot read chat template file {chat_template_file}: {exc}") from None
        return ChatTemplate(text, bos, eos, source=f"file:{chat_template_file}")
    if chat_template is not None:
        if not isinstance(chat_template, str) or not chat_template.strip():
            raise ChatTemplateError("chat_template must be a built-in template name or Jinja text")
        if "{{" in chat_template or "{%" in chat_template:
            return ChatTemplate(chat_template, bos, eos, source="jinja")
        names = builtin_templates()
        if chat_template not in names:
            raise ChatTemplateError(f"unknown chat template {chat_template!r}; llama.cpp's built-in templates are: "
                                    f"{', '.join(names)} (or give Jinja text or --chat-template-file)")
        return ChatTemplate(None, bos, eos, name=chat_template, source=f"builtin:{chat_template}")
    return ChatTemplate(backend.chat_template(), bos, eos, source="gguf")


def tokenize_text(backend, text: str) -> List[int]:
    """Tokens of one whole prompt string, control-token strings parsed (raw-prompt mode and benchmarks).

    BOS is added only where the model wants it and the text lacks it.
    """
    bos, _ = backend.bos_eos_text()
    add = backend.add_bos() and not (bos and text.startswith(bos))
    return backend.tokenize(text, add_special=add)


# Scaffolding strings split into control-token strings and text, per backend (a template has few).
_MARKUP: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_MARKUP_LIMIT = 4096


def _has_control(backend, text: str) -> bool:
    return bool(text) and (backend.tokenize(text, add_special=False, parse_special=True)
                           != backend.tokenize(text, add_special=False, parse_special=False))


def _split_controls(backend, markup: str) -> Parts:
    """markup as (text, is_control) pieces, found with the tokenizer alone (two binary searches per
    control token); the whole markup as one control piece if the pieces do not re-tokenize to it."""
    pieces, rest = [], markup
    while _has_control(backend, rest):
        lo, hi = 1, len(rest)  # the shortest prefix holding a control token ends where it ends
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if _has_control(backend, rest[:mid]) else (mid + 1, hi)
        end, lo, hi = lo, 0, lo - 1  # and the shortest tail of that prefix holding it starts where it starts
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if _has_control(backend, rest[mid:end]) else (lo, mid - 1)
        if lo:
            pieces.append((rest[:lo], False))
        pieces.append((rest[lo:end], True))
        rest = rest[end:]
    if rest:
        pieces.append((rest, False))
    ids = [t for text, ctl in pieces for t in backend.tokenize(text, add_special=False, parse_special=ctl)]
    if ids != backend.tokenize(markup, add_special=False, parse_special=True):
        return ((markup, True),)
    return tuple(pieces)


def _markup_pieces(backend, markup: str) -> Parts:
    try:
        cache = _MARKUP.setdefault(backend, {})
    except TypeError:  # not weak-referenceable: no cache
        cache = {}
    pieces = cache.get(markup)
    if pieces is None:
        pieces = _split_controls(backend, markup)
        if len(cache) >= _MARKUP_LIMIT:
            cache.clear()
        cache[markup] = pieces
    return pieces


def tokenize_parts(backend, parts: Parts) -> List[int]:
    """Tokens of a rendered prompt from its segments: control tokens only from scaffolding.

    Text between control tokens (scaffolding text and content alike) is tokenized as one run
    with special parsing off, as the tokenizer itself splits a string at its control tokens; so
    a prompt whose content holds no control-token strings gets exactly tokenize_text's ids.
    """
    runs: List[List] = []
    for text, scaffolding in parts:
        for piece, control in (_markup_pieces(backend, text) if scaffolding else ((text, False),)):
            if runs and not control and not runs[-1][1]:
                runs[-1][0] += piece
            else:
                runs.append([piece, control])
    bos, _ = backend.bos_eos_text()
    add = backend.add_bos() and not (bos and parts and parts[0][1] and parts[0][0].startswith(bos))
    ids: List[int] = []
    for i, (text, control) in enumerate(runs):
        ids += backend.tokenize(text, add_special=add and i == 0, parse_special=control)
    if not runs and add:
        ids = backend.tokenize("", add_special=True)
    return ids


def tokenize_rendered(backend, text: str, parts: Optional[Parts]) -> List[int]:
    """Token ids of one prompt: a rendered one by its parts (content is plain text), a raw one
    (parts None) by tokenize_text."""
    return tokenize_text(backend, text) if parts is None else tokenize_parts(backend, parts)


def raw_pair(principled_prompt: str, plain_prompt: Optional[str]) -> PromptPair:
    """Raw-prompt mode: both strings given explicitly (no template).

    The caller wrote the whole string, so control-token strings in it are parsed as control tokens.
    """
    if not isinstance(principled_prompt, str) or not principled_prompt:
        raise InvalidParameterError("principled prompt must be a non-empty string")
    if plain_prompt is not None and (not isinstance(plain_prompt, str) or not plain_prompt):
        raise InvalidParameterError("plain prompt must be a non-empty string or None")
    check_unicode(principled_prompt, "principled prompt")
    if plain_prompt is not None:
        check_unicode(plain_prompt, "plain prompt")
    return PromptPair(principled=principled_prompt, plain=plain_prompt)
