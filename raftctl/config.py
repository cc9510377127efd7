"""Config files (TOML) for `raftctl server` and `raftctl agent`, equivalent to their flags.

A key is a long flag without its dashes, ``-`` written ``_`` (``--data-dir`` ->
``data_dir``, ``--tls-cert`` -> ``tls_cert``); a repeatable flag also answers to
its plural (``peers = [...]`` for ``--peer``, ``servers`` for ``--server``,
``labels`` for ``--label``) and takes a list or a single string. The file
becomes click's ``default_map``, so the precedence is click's own: a flag on
the command line, then an environment variable, then the file, then the
built-in default. An unknown key or a value of the wrong type is an error
naming the key and the file. Relative paths in path settings are taken
relative to the file's directory.
"""
from __future__ import annotations

import os
import tomllib
from typing import Any, Callable, TypeVar

import click

from raftctl.errors import ValidationError

F = TypeVar("F", bound=Callable[..., Any])

_TOML_TYPES = {str: "a string", int: "an integer", float: "a float", bool: "a boolean", list: "an array",
               dict: "a table"}


def _toml_type(value: Any) -> str:
    return _TOML_TYPES.get(type(value), type(value).__name__)


def option_keys(command: click.Command) -> dict[str, click.Option]:
    """Every key a config file for ``command`` may hold, mapped to its option."""
    keys: dict[str, click.Option] = {}
    for p in command.params:
        if not isinstance(p, click.Option) or p.name is None or p.name == "config" or not p.expose_value:
            continue
        longs = [o for o in p.opts if o.startswith("--")]
        if not longs:
            continue
        keys[longs[0][2:].replace("-", "_")] = p
        if p.multiple:
            keys.setdefault(p.name, p)
    return keys


def _scalar(path: str, key: str, opt: click.Option, value: Any, base: str) -> Any:
    def bad(expected: str) -> ValidationError:
        return ValidationError(f"{key} in {path}: must be {expected}, not {_toml_type(value)}", field=key)

    t = opt.type
    if opt.is_flag:
        if not isinstance(value, bool):
            raise bad("a boolean (true or false)")
        return value
    if isinstance(t, click.types.IntParamType):  # INT and IntRange
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        if isinstance(t, click.IntRange):
            try:
                t.convert(value, opt, None)
            except click.BadParameter as exc:
                raise ValidationError(f"{key} in {path}: {exc.message}", field=key) from None
        return value
    if isinstance(t, click.types.FloatParamType):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if not isinstance(value, str):
        raise bad("a string")
    if isinstance(t, click.Choice) and value not in t.choices:
        raise ValidationError(f"{key} in {path}: {value!r} is not one of {', '.join(map(str, t.choices))}",
                              field=key)
    if isinstance(t, click.Path) and value and not os.path.isabs(value):
        return os.path.normpath(os.path.join(base, value))
    return value


def load_config(path: str, command: click.Command) -> dict[str, Any]:
    """Read a TOML file into ``{parameter name: value}`` for ``command``, checking every key and type."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ValidationError(f"cannot read {path}: {exc.strerror}", field="--config") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValidationError(f"{path} is not valid TOML: {exc}", field="--config") from None
    keys = option_keys(command)
    base = os.path.dirname(os.path.abspath(path))
    out: dict[str, Any] = {}
    given: dict[str, str] = {}
    for key, value in data.items():
        opt = keys.get(key)
        if opt is None:
            raise ValidationError(f"{key} in {path}: unknown key; `raftctl {command.name}` takes "
                                  f"{', '.join(sorted(keys))}", field=key)
        assert opt.name is not None
        if opt.name in given:
            raise ValidationError(f"{key} in {path}: the same setting as {given[opt.name]}; give it once",
                                  field=key)
        given[opt.name] = key
        if opt.multiple:
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list):
                raise ValidationError(f"{key} in {path}: must be an array of strings or a string, "
                                      f"not {_toml_type(value)}", field=key)
            out[opt.name] = [_scalar(path, f"{key}[{i}]", opt, v, base) for i, v in enumerate(items)]
        else:
            out[opt.name] = _scalar(path, key, opt, value, base)
    return out


def _use_config(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is None or ctx.resilient_parsing:
        return
    ctx.default_map = {**(ctx.default_map or {}), **load_config(value, ctx.command)}


def config_option(fn: F) -> F:
    """``--config FILE``: read before every other option, its settings become the options' defaults."""
    return click.option("--config", type=click.Path(dir_okay=False), is_eager=True, expose_value=False,
                        callback=_use_config,
                        help="TOML file with the same settings as the flags (data_dir, peers, tls_cert, ...); "
                             "flags on the command line win.")(fn)
