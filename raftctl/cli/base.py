"""The root of the command line: the ``raftctl`` group, its global options and the context helpers.

Every command module imports this one (never ``main``), registers its commands onto ``cli``, and reaches
the control plane through :func:`client` (raftctl.client). ``main`` imports the command modules.

Global options (``-o/--output``, ``--server``, ``--token``, ``--tls-ca``) are accepted before or after the
subcommand, as with kubectl: every group and command made here carries them, and each occurrence writes
into the root context's ``obj``; groups are parsed before their subcommands, so the later occurrence wins
(``raftctl -o json job list -o yaml`` prints YAML). The root alone reads the environment variables and
holds the defaults. The daemons (``server``, ``agent``) opt out with ``global_options=False``: their own
``--server``/``--token``/``--tls-ca`` mean something else and their flags map one to one to config keys.
"""
from __future__ import annotations

import sys
from typing import Any, Callable

import click

from raftctl.client import Client
from raftctl.errors import RaftctlError

OUTPUTS = ("table", "wide", "json", "yaml")


def split_servers(values: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for v in values:
        out.extend(s for s in v.replace(",", " ").split() if s)
    return out


def _store(key: str, convert: Callable[[Any], Any] = lambda v: v, *, root: bool) -> Callable[..., None]:
    """A callback writing the option's value into the root context's obj: always at the root (its value or
    its default), elsewhere only when the option was given, so that a later occurrence wins."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        given = value not in (None, ())
        if root or given:
            ctx.find_root().ensure_object(dict)[key] = convert(value)

    return callback


def global_options(*, root: bool) -> list[click.Option]:
    """The options every command accepts; at the root they read the environment and hold the defaults."""
    return [
        click.Option(["--server", "global_servers"], multiple=True, expose_value=False,
                     envvar="RAFTCTL_SERVER" if root else None, callback=_store("servers", split_servers, root=root),
                     help="API URL of a control replica (several allowed; failover between them)."),
        click.Option(["--token", "global_token"], expose_value=False, envvar="RAFTCTL_TOKEN" if root else None,
                     callback=_store("token", root=root), help="Bearer token (or RAFTCTL_TOKEN)."),
        click.Option(["-o", "--output", "global_output"], type=click.Choice(OUTPUTS), expose_value=False,
                     default="table" if root else None, callback=_store("output", root=root),
                     help="Output format (wide: tables with more columns; json and yaml for scripts)."),
        click.Option(["--tls-ca", "global_tls_ca"], type=click.Path(dir_okay=False), expose_value=False,
                     envvar="RAFTCTL_CA_CERT" if root else None, callback=_store("tls_ca", root=root),
                     help="CA certificate that https:// servers are verified with (or RAFTCTL_CA_CERT)."),
    ]


def _add_global_options(command: click.Command, root: bool) -> None:
    """Append the global options the command does not define itself (its own flag keeps its meaning)."""
    taken = {o for p in command.params for o in getattr(p, "opts", ())}
    command.params.extend(o for o in global_options(root=root) if not taken & set(o.opts))


class Command(click.Command):
    """A leaf command that also accepts the global options (unless ``global_options=False``)."""

    def __init__(self, *args: Any, global_options: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if global_options:
            _add_global_options(self, root=False)


class Group(click.Group):
    """A group whose commands and subgroups accept the global options; raftctl errors become a one-line
    message and a non-zero exit (2 for a refused request, 1 otherwise)."""

    command_class = Command
    group_class = type  # subgroups are Groups too

    def __init__(self, *args: Any, root: bool = False, global_options: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if global_options:
            _add_global_options(self, root=root)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RaftctlError as exc:
            message = exc.message.replace("\n", "; ")
            click.echo(f"error: {exc.field + ': ' if exc.field and not message.startswith(exc.field) else ''}{message}",
                       err=True)
            sys.exit(2 if exc.http_status and 400 <= exc.http_status < 500 else 1)


@click.group(cls=Group, root=True)
@click.pass_context
def cli(ctx: click.Context) -> None:
    """raftctl: run services as many isolated replicas on many machines."""
    ctx.ensure_object(dict)


def client(ctx: click.Context) -> Client:
    return Client(ctx.obj["servers"], ctx.obj["token"], ca=ctx.obj.get("tls_ca"))


def output(ctx: click.Context) -> str:
    """The output format asked for (the last -o given, before or after the subcommand)."""
    return str((ctx.find_root().obj or {}).get("output") or "table")


def structured(ctx: click.Context) -> bool:
    """-o json or -o yaml: output for scripts rather than people."""
    return output(ctx) in ("json", "yaml")
