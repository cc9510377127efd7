"""Output for people (tables) and for scripts (-o json, -o yaml)."""
from __future__ import annotations

import json
import sys
from typing import Any, Sequence

import click
import yaml

from raftctl.cli.base import output


def dump(fmt: str, data: Any) -> str:
    """``data`` as one JSON value or one YAML document (keys sorted, block style)."""
    if fmt == "yaml":
        return yaml.safe_dump(data, sort_keys=True, default_flow_style=False, allow_unicode=True).rstrip("\n")
    return json.dumps(data, indent=2, sort_keys=True)


def record(ctx: click.Context, data: Any) -> None:
    """One item of a stream (events, watch answers): a JSON line, or a YAML document after ``---``."""
    if output(ctx) == "yaml":
        click.echo("---\n" + dump("yaml", data))
    else:
        click.echo(json.dumps(data, sort_keys=True))


def emit(ctx: click.Context, data: Any, table: Sequence[Sequence[Any]] | None = None,
         headers: Sequence[str] | None = None, text: str | None = None) -> None:
    fmt = output(ctx)
    if fmt in ("json", "yaml"):
        click.echo(dump(fmt, data))
        return
    if text is not None:
        click.echo(text)
    if table is not None and headers is not None:
        click.echo(format_table(headers, table))


def wide(ctx: click.Context) -> bool:
    """`-o wide`: a table with the extra columns a command offers."""
    return output(ctx) == "wide"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h).upper() for h in headers]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells)


def fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def read_secret(secret: str | None, secret_file: str | None, flag: str = "--secret-file") -> str | None:
    """The secret given on the command line, or the stripped contents of ``secret_file`` (``flag`` names it
    in the error: unreadable or empty files fail)."""
    if secret_file:
        try:
            with open(secret_file) as f:
                value = f.read().strip()
        except OSError as exc:
            fail(f"{flag}: cannot read {secret_file}: {exc.strerror}")
        if not value:
            fail(f"{flag}: {secret_file} is empty")
        return value
    return secret
