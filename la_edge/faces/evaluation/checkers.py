"""Offline checkers for verifiable principles and fluency figures: pure functions, no model.

Each checker takes the answer text (and its arguments) and returns True when the answer
follows the principle. `check(text, spec)` dispatches on spec["type"].
"""

from __future__ import annotations

import json
import re
from typing import Dict, Iterable, List, Sequence

from ...errors import MissingDependencyError

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s|$)")
_BULLET = re.compile(r"^\s*[*\-•+]\s+\S")
_LEAD = " \t\r\n\"'“”‘’*_#>`"


def words(text: str) -> List[str]:
    """Words of a text (letters and digits; inner apostrophes kept)."""
    return _WORD.findall(text)


def count_words(text: str) -> int:
    """Number of words."""
    return len(words(text))


def sentences(text: str) -> List[str]:
    """Sentences: split after . ! ? and at line breaks; pieces without a word are dropped."""
    pieces: List[str] = []
    for line in text.splitlines():
        pieces += _SENTENCE_END.split(line)
    return [p.strip() for p in pieces if _WORD.search(p)]


def count_sentences(text: str) -> int:
    """Number of sentences (see `sentences`)."""
    return len(sentences(text))


def count_syllables(word: str) -> int:
    """Heuristic English syllable count: vowel groups, less a silent final e; at least 1."""
    w = re.sub(r"[^a-z]", "", word.lower())
    if not w:
        return 1
    n = len(re.findall(r"[aeiouy]+", w))
    if w.endswith("e") and not w.endswith(("le", "ee", "ye")) and n > 1:
        n -= 1
    if re.search(r"[^aeiouy](es|ed)$", w) and not re.search(r"[td]ed$|[scxz]es$|[cs]hes$", w) and n > 1:
        n -= 1
    return max(n, 1)


def flesch_kincaid_grade(text: str) -> float:
    """Flesch-Kincaid grade level: 0.39 words/sentence + 11.8 syllables/word - 15.59."""
    ws = words(text)
    if not ws:
        return 0.0
    n_sent = max(count_sentences(text), 1)
    syll = sum(count_syllables(w) for w in ws)
    return 0.39 * len(ws) / n_sent + 11.8 * syll / len(ws) - 15.59


def require_langdetect():
    """The langdetect module, seeded for determinism; MissingDependencyError if absent."""
    try:
        import langdetect
    except ImportError as exc:
        raise MissingDependencyError(
            "the language checker needs langdetect: pip install 'la-edge[eval]' (or pip install langdetect)"
        ) from exc
    langdetect.DetectorFactory.seed = 0
    return langdetect


def detect_language(text: str) -> str:
    """ISO 639-1 code of the text's language ('unknown' when there is nothing to detect)."""
    langdetect = require_langdetect()
    try:
        return langdetect.detect(text)
    except langdetect.LangDetectException:
        return "unknown"


def check_language(text: str, language: str) -> bool:
    """The answer is written in `language` (an ISO 639-1 code such as 'fr')."""
    return detect_language(text) == language


def check_concise(text: str, max_words: int, max_sentences: int) -> bool:
    """At most `max_words` words and `max_sentences` sentences, and not empty."""
    n = count_words(text)
    return 0 < n <= max_words and count_sentences(text) <= max_sentences


def check_reading_level(text: str, max_grade: float, min_words: int = 5) -> bool:
    """Flesch-Kincaid grade at most `max_grade`, over an answer of at least `min_words` words."""
    return count_words(text) >= min_words and flesch_kincaid_grade(text) <= max_grade


def check_bullet_list(text: str, min_items: int = 3) -> bool:
    """At least `min_items` lines that are bullet points ('* ', '- ', '• ' or '+ ')."""
    return sum(1 for line in text.splitlines() if _BULLET.match(line)) >= min_items


def check_json(text: str) -> bool:
    """The whole answer (optionally in a ``` fence) parses as a JSON object or array."""
    body = text.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, re.S | re.I)
    if fenced:
        body = fenced.group(1)
    try:
        return isinstance(json.loads(body), (dict, list))
    except ValueError:
        return False


def check_lowercase(text: str) -> bool:
    """The answer has letters and none of them is upper case."""
    return any(c.isalpha() for c in text) and text == text.lower()


def check_starts_with(text: str, phrase: str) -> bool:
    """The answer begins with `phrase` (case-insensitive; leading quotes and markdown ignored)."""
    return text.lstrip(_LEAD).lower().startswith(phrase.lower())


def check_ends_with(text: str, phrase: str) -> bool:
    """The answer ends with `phrase` (case-insensitive; trailing quotes and markdown ignored)."""
    return text.rstrip(_LEAD).lower().endswith(phrase.lower().rstrip(_LEAD))


def _has_word(text: str, word: str) -> bool:
    return re.search(r"(?<!\w)" + re.escape(word) + r"(?!\w)", text, re.I) is not None


def check_include_keywords(text: str, keywords: Sequence[str]) -> bool:
    """Every keyword occurs as a whole word (case-insensitive)."""
    return all(_has_word(text, k) for k in keywords)


def check_avoid_keywords(text: str, forbidden_words: Sequence[str]) -> bool:
    """No forbidden word occurs as a whole word (case-insensitive)."""
    return not any(_has_word(text, k) for k in forbidden_words)


CHECKERS = {
    "language": check_language,
    "concise": check_concise,
    "reading_level": check_reading_level,
    "bullet_list": check_bullet_list,
    "json": check_json,
    "lowercase": check_lowercase,
    "starts_with": check_starts_with,
    "ends_with": check_ends_with,
    "include_keywords": check_include_keywords,
    "avoid_keywords": check_avoid_keywords,
}


def check(text: str, spec: Dict[str, object], finished: bool = True) -> bool:
    """Run the checker named by spec['type'] with the other keys as arguments.

    With spec['complete'] true, an answer cut off by max_tokens (finished=False) fails.
    """
    args = dict(spec)
    kind = args.pop("type")
    if args.pop("complete", False) and not finished:
        return False
    if kind not in CHECKERS:
        raise ValueError(f"unknown checker {kind!r}; known: {', '.join(sorted(CHECKERS))}")
    return bool(CHECKERS[kind](text, **args))


def _ngrams(tokens: Sequence[str], n: int) -> List[tuple]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(text: str, n: int) -> float:
    """Distinct-n: unique word n-grams / all word n-grams (0 when there are none)."""
    grams = _ngrams([w.lower() for w in words(text)], n)
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(text: str, n: int = 4) -> float:
    """seq-rep-n (Welleck et al., 2019): share of word n-grams that repeat an earlier one."""
    grams = _ngrams([w.lower() for w in words(text)], n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def fluency(text: str) -> Dict[str, float]:
    """Fluency guard of one answer: distinct-1, distinct-2, rep-4 and its word count."""
    return {
        "distinct_1": distinct_n(text, 1),
        "distinct_2": distinct_n(text, 2),
        "rep_4": repetition_rate(text, 4),
        "words": float(count_words(text)),
    }


def uses(specs: Iterable[Dict[str, object]], kind: str) -> bool:
    """Whether any spec uses the checker `kind`."""
    return any(s.get("type") == kind for s in specs)
