"""raftctl completion bash|zsh|fish: the shell completion script (click's shell completion)."""
from __future__ import annotations

import click
from click.shell_completion import get_completion_class

PROG = "raftctl"
COMPLETE_VAR = "_RAFTCTL_COMPLETE"  # what click's main() answers to: _{PROG}_COMPLETE, upper-case
SHELLS = ("bash", "zsh", "fish")


def script(cli: click.Command, shell: str) -> str:
    cls = get_completion_class(shell)
    if cls is None:  # not reachable through the command (its argument is a Choice)
        raise click.BadParameter(f"no completion for {shell!r}", param_hint="SHELL")
    return cls(cli, {}, PROG, COMPLETE_VAR).source()


def register(cli: click.Group) -> None:
    @cli.command()
    @click.argument("shell", type=click.Choice(SHELLS))
    def completion(shell: str) -> None:
        """Print the completion script for SHELL.

        \b
        bash:  eval "$(raftctl completion bash)"        (e.g. in ~/.bashrc)
        zsh:   eval "$(raftctl completion zsh)"         (e.g. in ~/.zshrc)
        fish:  raftctl completion fish > ~/.config/fish/completions/raftctl.fish
        """
        click.echo(script(cli, shell))
