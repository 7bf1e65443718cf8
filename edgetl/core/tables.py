"""Plain-text tables for the terminal and Markdown tables for reports (Python 3.8 syntax)."""

from __future__ import annotations

from typing import Any, List, Sequence


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "{:.4g}".format(value) if abs(value) < 1e5 else "{:.3e}".format(value)
    return str(value)


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Aligned columns with a rule under the header."""
    cells: List[List[str]] = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(out)
