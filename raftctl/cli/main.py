"""raftctl: the command line. One module per command group; all talk through raftctl.client.

The root group and its context helpers live in raftctl.cli.base; this module imports the command
modules and registers them onto it (no command module imports this one).
"""
from __future__ import annotations

from raftctl.cli import (agent, cluster, completion, discover, image, job, logs, machine, server, snapshot, tls,
                         token, top, up)
from raftctl.cli.base import cli

__all__ = ["cli", "main"]

for _module in (server, agent, up, cluster, job, image, machine, discover, logs, token, top, tls, snapshot,
                completion):
    _module.register(cli)


def main() -> None:
    cli(prog_name="raftctl", auto_envvar_prefix=None)


if __name__ == "__main__":
    main()
