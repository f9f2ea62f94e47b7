"""Request bodies of every HTTP face: read (at most MAX_BODY_BYTES, 413 beyond), then strict JSON.

Bodies are strict JSON (no NaN/Infinity), at most MAX_DEPTH deep, with no lone surrogates in any
string; each refusal is a RequestError (400) that names the field.
"""

from __future__ import annotations

import json
from typing import Any, Dict, NamedTuple, Optional

from ..errors import InvalidParameterError, check_unicode

__all__ = ["MAX_BODY_BYTES", "MAX_DEPTH", "RequestError", "load_body", "read_body"]

MAX_BODY_BYTES = 1 << 20
MAX_DEPTH = 16  # a chat body needs 6 (body > messages > message > content > part > value)


class RequestError(InvalidParameterError):
    """A request the server refuses before generating: `status` (400, 413, 422), `param`, `code`."""

    def __init__(self, message: str, status: int = 400, param: Optional[str] = None, code: str = "invalid_value"):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


async def read_body(http, limit: int = MAX_BODY_BYTES) -> bytes:
    """The raw body of a starlette Request, at most `limit` bytes (RequestError 413 beyond)."""
    too_big = RequestError(f"request body exceeds {limit} bytes", status=413, code="body_too_large")
    declared = http.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    parts, size = [], 0
    async for part in http.stream():
        size += len(part)
        if size > limit:
            raise too_big
        parts.append(part)
    return b"".join(parts)


class _NotJson(NamedTuple):
    """NaN, Infinity or -Infinity where the body had one (refused by _check_tree, naming the field)."""

    name: str


def load_body(body: bytes) -> Dict[str, Any]:
    """The body as a JSON object, checked for depth and lone surrogates."""
    try:
        data = json.loads(body, parse_constant=_NotJson)
    except RecursionError:
        raise RequestError(f"request body nests deeper than {MAX_DEPTH} levels", code="invalid_json") from None
    except ValueError:  # UnicodeDecodeError included
        raise RequestError("request body is not valid JSON (UTF-8, no NaN or Infinity)", code="invalid_json") from None
    if not isinstance(data, dict):
        raise RequestError("request body must be a JSON object", code="invalid_json")
    _check_tree(data)
    return data


def _check_tree(data: Any) -> None:
    # Iterative walk (no recursion): depth bound and valid Unicode in every key and string.
    stack = [(data, 1, None, "")]
    while stack:
        value, depth, parent, key = stack.pop()
        if depth > MAX_DEPTH:
            raise RequestError(f"request body nests deeper than {MAX_DEPTH} levels", code="invalid_json")
        if isinstance(value, dict):
            for k, v in value.items():
                _check_text(k, lambda: _path(parent, key))
                stack.append((v, depth + 1, (parent, key), k))
        elif isinstance(value, list):
            stack.extend((v, depth + 1, (parent, key), i) for i, v in enumerate(value))
        elif isinstance(value, str):
            _check_text(value, lambda: _path(parent, key))
        elif isinstance(value, _NotJson):
            path = _path(parent, key)
            raise RequestError(f"{path or 'request body'}: {value.name} is not JSON (send a finite number)",
                               param=path or None, code="invalid_json")


def _check_text(text: str, where) -> None:
    try:
        check_unicode(text)
    except InvalidParameterError as exc:
        path = where()  # built only on error: most bodies are valid
        raise RequestError(f"{path or 'a key'}: {exc}", param=path or None) from None


def _path(parent, key) -> str:
    parts = []
    while parent is not None:
        parts.append(f"[{key}]" if isinstance(key, int) else f".{key}")
        parent, key = parent
    return "".join(reversed(parts)).lstrip(".")
