"""Logprob entries of generated tokens, written once for every face, from what the answer already carries.

A streamed token's text and bytes come from its Chunk (`piece`, `top_text`); a whole answer's from
its GenerationResult's logprobs. An alternative's bytes are its text in UTF-8, except where that text
holds U+FFFD (a piece of a UTF-8 character, decoded with replacement): those few tokens are looked
up once in the vocabulary by `TokenBytes.learn`, in a worker thread, and kept. So no vocabulary call
runs on the event loop.

Logprobs that are not finite (-inf where the aligned distribution underflows, e.g. at
alignment_ratio 100) are sent as LOGPROB_FLOOR = -9999.0, the floor OpenAI itself uses, so every
body is valid JSON.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple

__all__ = ["LOGPROB_FLOOR", "Step", "Token", "TokenBytes", "finite"]

LOGPROB_FLOOR = -9999.0
REPLACEMENT = "\ufffd"


def finite(logprob: Optional[float]) -> Optional[float]:
    return logprob if logprob is None or math.isfinite(logprob) else LOGPROB_FLOOR


class Token(NamedTuple):
    """One token as an answer shows it: its text, its own bytes, its logprob."""

    text: str
    raw: bytes
    logprob: Optional[float]

    def entry(self) -> Dict[str, Any]:
        return {"token": self.text, "logprob": finite(self.logprob), "bytes": list(self.raw)}


class Step(NamedTuple):
    """A generated token, its top alternatives and the adaptive ratio's factor (1.0: fixed ratio)."""

    token: Token
    top: Tuple[Token, ...]
    ratio_scale: float = 1.0

    def entry(self) -> Dict[str, Any]:
        """The token with its `top_logprobs` (OpenAI chat's and Ollama's logprobs entry)."""
        return {**self.token.entry(), "top_logprobs": [t.entry() for t in self.top]}


class TokenBytes:
    """The bytes of tokens known by their text; see the module docstring. One per aligner."""

    def __init__(self, la):
        self._la = la
        self._split: Dict[int, bytes] = {}  # token -> bytes, for tokens whose text holds U+FFFD

    def learn(self, tokens: Iterable[Tuple[int, str]]) -> None:
        """Look up the tokens (id, text) whose bytes their text cannot give back (call off the event loop)."""
        for token, text in tokens:
            if REPLACEMENT in text and token not in self._split:
                self._split[token] = self._la.token_bytes(token)

    def learn_chunk(self, c) -> None:
        self.learn(zip((t for t, _ in c.top), c.top_text))

    def learn_result(self, result) -> None:
        for d in result.logprobs:
            self.learn([(d["token"], d["text"])] + [(a["token"], a["text"]) for a in d["top"]])

    def token(self, token: int, text: str, logprob: Optional[float]) -> Token:
        raw = self._split[token] if REPLACEMENT in text else text.encode("utf-8")
        return Token(text, raw, logprob)

    def chunk_step(self, c) -> Step:
        """The Step of a streamed Chunk (after learn_chunk)."""
        top = tuple(self.token(t, text, lp) for (t, lp), text in zip(c.top, c.top_text))
        return Step(Token(c.piece.decode("utf-8", "replace"), c.piece, c.logprob), top, c.ratio_scale)

    def result_steps(self, result) -> List[Step]:
        """The Steps of a GenerationResult (after learn_result)."""
        return [Step(self.token(d["token"], d["text"], d["logprob"]),
                     tuple(self.token(a["token"], a["text"], a["logprob"]) for a in d["top"]),
                     d.get("ratio_scale", 1.0)) for d in result.logprobs]
