"""Output helpers shared by the faces: Markdown tables, and matplotlib on its file-only backend."""

from __future__ import annotations

from typing import Iterable, List, Sequence

PLOT_HINT = "pip install 'la-edge[eval]' (or pip install matplotlib)"


def markdown_lines(header: Sequence[str], rows: Iterable[Sequence[object]], align: str = "") -> List[str]:
    """A Markdown table as lines: one header row, the rule, one line per row (cells as str()).

    align: one character per column, "l" or "r" (right-aligned numbers); missing ones are "l".
    """
    if any(a not in "lr" for a in align) or len(align) > len(header):
        raise ValueError(f"align must be up to {len(header)} of 'l' or 'r', got {align!r}")
    rule = ["---:" if a == "r" else "---" for a in align.ljust(len(header), "l")]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a row has {len(row)} cells for {len(header)} columns: {row!r}")
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return lines


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str = "") -> str:
    """markdown_lines() joined into one string (no trailing newline)."""
    return "\n".join(markdown_lines(header, rows, align))


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display).

    Raises ImportError with the install hint when matplotlib is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(f"plots need matplotlib ({exc}): {PLOT_HINT}") from exc
    return plt
