"""llama.cpp's built-in chat templates (llama_chat_builtin_templates, llama_chat_apply_template): the
names, and rendering messages with one (no model needed)."""

from __future__ import annotations

import ctypes
from typing import List, Sequence

import llama_cpp

from ..errors import InvalidParameterError

__all__ = ["apply_builtin_template", "builtin_chat_templates"]


def builtin_chat_templates() -> List[str]:
    """Names of the chat templates built into this llama.cpp (llama_chat_builtin_templates)."""
    n = llama_cpp.llama_chat_builtin_templates(None, 0)
    arr = (ctypes.c_char_p * n)()
    llama_cpp.llama_chat_builtin_templates(arr, n)
    return [a.decode("utf-8") for a in arr]


def apply_builtin_template(name: str, messages: Sequence[dict], add_assistant: bool = True) -> str:
    """Render messages with a built-in llama.cpp template (llama_chat_apply_template)."""
    keep = []
    chat = (llama_cpp.llama_chat_message * len(messages))()
    for i, m in enumerate(messages):
        role, content = m["role"].encode("utf-8"), m["content"].encode("utf-8")
        keep += [role, content]
        chat[i].role, chat[i].content = role, content
    size = 256 + 2 * sum(len(k) for k in keep)
    for _ in range(2):
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_chat_apply_template(name.encode("utf-8"), chat, len(messages), add_assistant, buf, size)
        if n < 0:
            raise InvalidParameterError(f"llama.cpp could not apply chat template {name!r}")
        if n <= size:
            return buf.raw[:n].decode("utf-8")
        size = n + 1
    raise InvalidParameterError(f"chat template {name!r} output did not fit its buffer")
