"""Output for people (tables) and for scripts (-o json)."""
from __future__ import annotations

import json
import sys
from typing import Any, Sequence

import click


def emit(ctx: click.Context, data: Any, table: Sequence[Sequence[Any]] | None = None,
         headers: Sequence[str] | None = None, text: str | None = None) -> None:
    if ctx.obj.get("output") == "json":
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    if text is not None:
        click.echo(text)
    if table is not None and headers is not None:
        click.echo(format_table(headers, table))


def wide(ctx: click.Context) -> bool:
    """`-o wide`: a table with the extra columns a command offers."""
    return ctx.obj.get("output") == "wide"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h).upper() for h in headers]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells)


def fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)
