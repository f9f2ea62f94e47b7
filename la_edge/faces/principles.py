"""Principle sets as the CLI and files give them: repeatable flags, TOML profiles and presets.

The one object every face submits, `PrincipleSpec`, lives in the runtime (`la_edge.runtime.spec`);
its names are re-exported here for the faces.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..errors import InvalidParameterError
from ..runtime.spec import (DEFAULT_AVOID_RATIO, DEFAULT_RATIO, SCHEDULES, Avoid, Principle, PrincipleSpec,
                            SpecError)

__all__ = ["DEFAULT_AVOID_RATIO", "DEFAULT_RATIO", "SCHEDULES", "Avoid", "Principle", "PrincipleSpec", "SpecError",
           "load_file", "per_item", "read_toml", "spec_from_table"]


def per_item(flag: str, values: Optional[Sequence[float]], n: int, items: str, default: float) -> List[float]:
    """A repeatable CLI flag: absent (default for all), once (for all) or once per item, in order."""
    if not values:
        return [default] * n
    if len(values) == 1:
        return list(values) * n
    if len(values) != n:
        raise InvalidParameterError(f"{flag}: give one value for all {items} or one per {items[:-1]} ({n}), "
                                    f"got {len(values)}")
    return list(values)


def read_toml(path: str, what: str) -> Dict[str, Any]:
    """A TOML file as a dict; errors name the file and say what it was for (`what`)."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        try:
            import tomli as tomllib
        except ImportError:
            raise InvalidParameterError(f"{path}: reading TOML needs Python 3.11 or the tomli package") from None
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise InvalidParameterError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidParameterError(f"{path}: not valid TOML ({exc})") from None


def spec_from_table(data: Mapping[str, Any], where: str, default_ratio: float = DEFAULT_RATIO) -> PrincipleSpec:
    """One TOML table of principles, avoid and ratio_schedule (a --principles-file, or one preset of a
    --presets-file); errors begin with `where`."""
    unknown = sorted(set(data) - {"principles", "avoid", "ratio_schedule"})
    if unknown:
        raise InvalidParameterError(f"{where}: unknown key {unknown[0]!r} (principles, avoid, ratio_schedule)")
    try:
        return PrincipleSpec.from_fields(data, default_ratio)
    except InvalidParameterError as exc:
        raise InvalidParameterError(f"{where}: {exc}") from None


def load_file(path: str, default_ratio: float = DEFAULT_RATIO) -> PrincipleSpec:
    """A `--principles-file`: TOML with [[principles]] (text, ratio, weight), [[avoid]] (text, ratio)
    and ratio_schedule; errors name the file and the key."""
    return spec_from_table(read_toml(path, "principles file"), path, default_ratio)
