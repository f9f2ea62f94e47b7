"""Principle presets chosen by model name, and what the server aligns a request to when it brings none.

A stock client sends a model name and messages, nothing more. So the server lists one model id per
preset, `MODEL:NAME` (`--preset NAME=TEXT[@RATIO]`, or `[presets.NAME]` tables of a
`--presets-file`, each table shaped like a `--principles-file`), and `Steering.choose` picks the
principles of a request that has none of its own, in this order:

    request principle / principles / avoid  >  system message (principle_from "system")
    >  the preset named by `model`  >  the server's default (--principle, --principles-file)

`alignment_ratio` in the request sets the ratio of every principle so chosen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import InvalidParameterError
from ..runtime.prompts import system_as_principle
from ..runtime.spec import DEFAULT_RATIO, Principle, PrincipleSpec
from .principles import read_toml, spec_from_table

DEFAULT_SEPARATOR = ":"
PLAIN_TAG = "latest"  # MODEL:latest is the plain model (Ollama clients add the tag)
PRINCIPLE_FROM = ("system", "none")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class UnknownModelError(InvalidParameterError):
    """A request named MODEL<separator>NAME with no preset NAME; `valid` lists the model ids served."""

    def __init__(self, requested: str, valid: Sequence[str]):
        super().__init__(f"model {requested[:120]!r} not found; this server has: {', '.join(valid)}")
        self.requested, self.valid = requested, list(valid)


def check_name(name: str, separator: str = DEFAULT_SEPARATOR) -> str:
    """A preset name: letters, digits, '.', '_', '-' (at most 64, not starting with a mark), not
    'latest', not holding the separator."""
    if separator in (name or ""):
        raise InvalidParameterError(f"preset name {name[:80]!r} holds the separator {separator!r} "
                                    "(rename it or change --preset-separator)")
    if not _NAME.fullmatch(name or ""):
        raise InvalidParameterError(f"preset name {name[:80]!r}: use 1-64 letters, digits, '.', '_' or '-', "
                                    "starting with a letter or digit")
    if name == PLAIN_TAG:
        raise InvalidParameterError(f"preset name {name!r} is taken: MODEL{separator}{PLAIN_TAG} is the plain model")
    return name


def parse_preset(text: str, default_ratio: float = DEFAULT_RATIO,
                 separator: str = DEFAULT_SEPARATOR) -> Tuple[str, PrincipleSpec]:
    """`--preset NAME=TEXT` or `NAME=TEXT@RATIO` -> (NAME, one principle). `@` followed by anything
    but a number stays part of the text."""
    name, eq, principle = text.partition("=")
    if not eq:
        raise InvalidParameterError(f"--preset {text[:80]!r}: give NAME=TEXT or NAME=TEXT@RATIO")
    name = check_name(name.strip(), separator)
    ratio = default_ratio
    head, at, tail = principle.rpartition("@")
    if at:
        try:
            ratio, principle = float(tail), head
        except ValueError:
            pass  # an '@' inside the principle itself
    try:
        return name, PrincipleSpec((Principle(principle.strip(), ratio),))
    except InvalidParameterError as exc:
        raise InvalidParameterError(f"--preset {name}: {str(exc).replace('principles[0].', '')}") from None


def load_presets_file(path: str, default_ratio: float = DEFAULT_RATIO,
                      separator: str = DEFAULT_SEPARATOR) -> Dict[str, PrincipleSpec]:
    """A `--presets-file`: TOML whose `[presets.NAME]` tables each hold principles, avoid and
    ratio_schedule as a --principles-file does. Errors name the file, the preset and the key."""
    data = read_toml(path, "presets file")
    unknown = sorted(set(data) - {"presets"})
    if unknown:
        raise InvalidParameterError(f"{path}: unknown key {unknown[0]!r} (presets live in [presets.NAME] tables)")
    tables = data.get("presets", {})
    if not isinstance(tables, dict) or not tables or not all(isinstance(t, dict) for t in tables.values()):
        raise InvalidParameterError(f"{path}: give at least one [presets.NAME] table")
    out = {}
    for name, table in tables.items():
        try:
            check_name(name, separator)
        except InvalidParameterError as exc:
            raise InvalidParameterError(f"{path}: {exc}") from None
        spec = spec_from_table(table, f"{path}: presets.{name}", default_ratio)
        if not spec.principles:
            raise InvalidParameterError(f"{path}: presets.{name}: give at least one principle")
        out[name] = spec
    return out


def merge_presets(*tables: Mapping[str, PrincipleSpec]) -> Dict[str, PrincipleSpec]:
    """Presets from several sources (file, flags); a name given twice is an error."""
    out: Dict[str, PrincipleSpec] = {}
    for table in tables:
        for name, spec in table.items():
            if name in out:
                raise InvalidParameterError(f"preset {name!r} is given twice")
            out[name] = spec
    return out


def with_ratio(spec: PrincipleSpec, ratio: Optional[float]) -> PrincipleSpec:
    """`spec` with every principle at `ratio` (None: unchanged); what `alignment_ratio` does to a preset."""
    if ratio is None or not spec.principles:
        return spec
    return replace(spec, principles=tuple(replace(p, ratio=ratio) for p in spec.principles))


@dataclass(frozen=True)
class Steering:
    """The server's side of choosing principles: the model ids it answers to, its presets, its default
    principles and whether the system message is the principle (`--principle-from system`)."""

    model: str
    presets: Mapping[str, PrincipleSpec] = field(default_factory=dict)
    separator: str = DEFAULT_SEPARATOR
    default: PrincipleSpec = PrincipleSpec()
    from_system: bool = False
    default_ratio: float = DEFAULT_RATIO  # the ratio of a system-message principle

    def __post_init__(self):
        if not self.separator or any(c.isspace() for c in self.separator):
            raise InvalidParameterError("--preset-separator must be a non-empty string without spaces")
        for name in self.presets:
            check_name(name, self.separator)

    def ids(self) -> List[str]:
        """The model ids to list: the model, then MODEL<sep>NAME per preset."""
        return [self.model] + [self.model + self.separator + n for n in self.presets]

    def preset(self, requested: Optional[str]) -> Optional[PrincipleSpec]:
        """The preset a model name selects; None for the plain model (MODEL, MODEL:latest, and any
        other name, as the server always accepted). MODEL<sep>NAME with no preset NAME raises
        UnknownModelError."""
        head = self.model + self.separator
        if not requested or not requested.startswith(head):
            return None
        name = requested[len(head):]
        if name in self.presets:
            return self.presets[name]
        if name == PLAIN_TAG:
            return None
        raise UnknownModelError(requested, self.ids())

    def choose(self, requested: Optional[str], messages: Optional[List[Dict[str, Any]]],
               principle_from: Optional[str], ratio: Optional[float]) -> Tuple[PrincipleSpec, Optional[List[Dict]]]:
        """(principles, messages) for a request that brings no principle of its own; `messages` is None
        for a raw completion, `ratio` the request's alignment_ratio (None: each principle's own).
        The system messages leave `messages` only when they become the principle."""
        preset = self.preset(requested)  # an unknown preset is an error whatever else the request holds
        mode = principle_from or ("system" if self.from_system else "none")
        if mode == "system" and messages is not None:
            principle, rest = system_as_principle(messages)
            if principle is not None:
                return PrincipleSpec.one(principle, self.default_ratio if ratio is None else ratio), rest
        return with_ratio(preset if preset is not None else self.default, ratio), messages

    def describe(self) -> str:
        """The presets for the ready line: their model ids, or "none"."""
        if not self.presets:
            return "none"
        return ", ".join(f"{self.model}{self.separator}{n}" for n in self.presets)
