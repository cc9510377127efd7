"""The one gate for untrusted bytes (issue 12): JSON, CBOR, YAML and TOML in, a plain JSON-model value out.

Every request body and every spec file passes here before any other code walks it. What comes out holds
only what a spec (and the replicated state, and a JSON answer) can hold: dicts with text keys, lists, text,
integers with ``|n| < 2**63``, finite floats, booleans and null; no value reachable twice (no shared or
cyclic references), within the bounds below. Everything else is a ``ValidationError`` naming the field
path where there is one (``env.FOO``, ``ports[0]``) and otherwise the document (``body``).

The bounds are checked before the decoder builds anything it cannot bound itself: CBOR is scanned header by
header (so no tag ever reaches cbor2, whose shared-reference and string-reference tags 28/29/25/256 build
cyclic and aliased objects without calling a ``tag_hook``), YAML is parsed to events first (aliases and
custom tags refused, depth and node count bounded), JSON and TOML are bounded by size and then walked (a small
JSON document whose bytes show it cannot hold anything the walk refuses skips the walk: ``quick``).

Pure: no I/O, no clock, no randomness (imported by node/, cli/ and statemachine/spec.py).
"""
from __future__ import annotations

import functools
import json
import math
import re
import struct
import tomllib
from dataclasses import dataclass, replace
from typing import Any, Callable

import cbor2
import yaml

from raftctl.errors import ValidationError

MAX_BYTES = 1 << 20
"""Largest document in bytes (the API's default --max-body; spec files too)."""
MAX_DEPTH = 64
"""Deepest nesting of lists and maps (the top-level value is depth 1)."""
MAX_ITEMS = 10_000
"""Most elements in one list or entries in one map."""
MAX_STRING = 65_536
"""Longest string or map key, in characters (CBOR: in UTF-8 bytes)."""
MAX_NODES = 100_000
"""Most values in one document, containers and scalars together."""
INT_BOUND = 2 ** 63
"""Integers must satisfy ``-INT_BOUND < n < INT_BOUND``."""

_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Limits:
    """The bounds one decode applies (the module's constants unless a caller states tighter ones)."""

    max_bytes: int = MAX_BYTES
    max_depth: int = MAX_DEPTH
    max_items: int = MAX_ITEMS
    max_string: int = MAX_STRING
    max_nodes: int = MAX_NODES
    bytes_ok: bool = False  # byte strings allowed (a snapshot file's state), each at most max_bytes long


DEFAULT = Limits()


def _field(path: str, root: str) -> str:
    return path or root


def _child(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    text = key if len(key) <= 64 and not _SURROGATE.search(key) else (key[:64].encode("utf-8", "replace")
                                                                     .decode("utf-8", "replace") + "...")
    return f"{path}.{text}" if path else text


# -- the JSON-model walk (every format ends here) ---------------------------------------------------------------

def check(value: Any, *, limits: Limits = DEFAULT, root: str = "body") -> Any:
    """``value`` if it is a JSON-model tree within ``limits``; otherwise a ValidationError naming the field."""
    if type(value) is not list and type(value) is not dict:
        _check_scalar(value, "", root, limits)
        return value
    seen: set[int] = set()
    nodes = 1
    stack: list[tuple[Any, str, int]] = [(value, "", 1)]  # containers only: scalars are checked in place
    while stack:
        v, path, depth = stack.pop()
        if id(v) in seen:
            raise ValidationError("a value is referenced twice (shared or cyclic reference)", field=_field(path, root))
        seen.add(id(v))
        if depth > limits.max_depth:
            raise ValidationError(f"nested deeper than {limits.max_depth} levels", field=_field(path, root))
        if len(v) > limits.max_items:
            raise ValidationError(f"{len(v)} entries; at most {limits.max_items} are allowed", field=_field(path, root))
        nodes += len(v)
        if nodes > limits.max_nodes:
            raise ValidationError(f"the document holds more than {limits.max_nodes} values", field=root)
        is_map = type(v) is dict
        if is_map:
            for k in v:
                if type(k) is not str:
                    raise ValidationError(f"map keys must be strings, not {type(k).__name__} ({str(k)[:40]})",
                                          field=_field(path, root))
                _check_string(k, path, root, limits, key=True)
        for k, item in (v.items() if is_map else enumerate(v)):
            t = type(item)
            if t is list or t is dict:
                stack.append((item, _child(path, k), depth + 1))
            elif t is str:
                if len(item) > limits.max_string or _SURROGATE.search(item):
                    _check_string(item, _child(path, k), root, limits)
            elif t is int:
                if not -INT_BOUND < item < INT_BOUND:
                    _check_scalar(item, _child(path, k), root, limits)
            elif item is None or t is bool or (t is float and math.isfinite(item)) or (t is bytes and limits.bytes_ok):
                continue
            else:
                _check_scalar(item, _child(path, k), root, limits)
    return value


def _check_scalar(v: Any, path: str, root: str, limits: Limits) -> None:
    t = type(v)
    if v is None or t is bool or (t is bytes and limits.bytes_ok):
        return
    if t is str:
        _check_string(v, path, root, limits)
    elif t is int:
        if not -INT_BOUND < v < INT_BOUND:
            raise ValidationError("integer out of range (|n| must be below 2**63)", field=_field(path, root))
    elif t is float:
        if not math.isfinite(v):
            raise ValidationError(f"{v} is not a finite number", field=_field(path, root))
    elif t is _Refusal:
        raise ValidationError(v.message, field=_field(path, root))
    else:
        raise ValidationError(f"{_kind_name(v)} values have no JSON equivalent", field=_field(path, root))


def _kind_name(v: Any) -> str:
    if type(v).__name__ in ("date", "datetime", "time"):
        return "date/time (quote it to make it a string)"
    if isinstance(v, (bytes, bytearray)):
        return "byte string"
    return type(v).__name__


def _check_string(s: str, path: str, root: str, limits: Limits, key: bool = False) -> None:
    where = _field(path, root)
    what = "map key" if key else "string"
    if len(s) > limits.max_string:
        raise ValidationError(f"{what} of {len(s)} characters; at most {limits.max_string} are allowed", field=where)
    if _SURROGATE.search(s):
        raise ValidationError(f"{what} holds a lone surrogate (not valid Unicode text)", field=where)


def _size(raw: bytes | str, limits: Limits, root: str) -> None:
    n = len(raw) if isinstance(raw, (bytes, bytearray)) else len(raw.encode("utf-8", "surrogatepass"))
    if n > limits.max_bytes:
        raise ValidationError(f"{n} bytes; at most {limits.max_bytes} bytes are allowed", field=root)


def _text(raw: bytes | str, root: str, kind: str) -> str:
    if isinstance(raw, str):
        return raw
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError(f"not valid {kind}: not UTF-8 text (byte {exc.start})", field=root) from None


# -- JSON -------------------------------------------------------------------------------------------------------

class _Refusal:
    """Stands in for a JSON number the gate refuses, so that the walk can name its field."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _no_constant(name: str) -> Any:
    return _Refusal(f"{name} is not a JSON number")


def _json_float(text: str) -> Any:
    value = float(text)
    return value if math.isfinite(value) else _Refusal(f"{text[:40]} is out of range")


def _json_int(text: str) -> Any:
    if len(text) > 20:  # never hand int() a number of thousands of digits
        return _Refusal(f"integer {text[:24]}{'...' if len(text) > 24 else ''} is out of range "
                        "(|n| must be below 2**63)")
    return int(text)


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _Refused(f"duplicate key {k[:64]!r}")
            seen.add(k)
    return out


class _Refused(ValueError):
    pass


_JSON = json.JSONDecoder(parse_constant=_no_constant, parse_float=_json_float, parse_int=_json_int,
                         object_pairs_hook=_pairs)
"""One decoder for every document: ``json.loads`` with these hooks built a new decoder and scanner per call."""


class _Fallback(Exception):
    """Raised inside the quick decoder (a NaN or Infinity constant): the document takes the walked way."""


def _constant_falls_back(name: str) -> Any:
    raise _Fallback(name)


_QUICK = json.JSONDecoder(parse_constant=_constant_falls_back, object_pairs_hook=_pairs)
"""The C scanner with no per-number hook: only what ``quick`` proved harmless reaches it."""


def _number_shapes() -> bytes:
    table = bytearray(b" " * 256)
    for digit in b"0123456789":
        table[digit] = ord("0")
    table[ord("e")] = table[ord("E")] = ord("e")
    table[ord("+")] = table[ord("-")] = ord("+")
    return bytes(table)


_SHAPES = _number_shapes()
"""A byte table: every digit to ``0``, ``e``/``E`` to ``e``, a sign to ``+``, anything else to a space."""


def quick(raw: bytes | str, limits: Limits) -> bool:
    """Whether the JSON text ``raw`` cannot decode to anything ``check`` refuses, so its walk can be skipped: no
    longer than the smallest count bound (a string, a container's entries and the document's values each take at
    least one byte: none can exceed it), no more brackets than ``max_depth`` (each level of nesting opens one), no
    ``\\u`` escape (the only way valid UTF-8 JSON holds a lone surrogate), no run of 19 digits (an integer at or
    past 2**63) and no exponent of three digits (a float that overflows to infinity). Digits inside a string
    count too: such a document is only walked, not refused. NaN and Infinity, which the C scanner hands to a
    hook, send it back to the walk. A text (``str``) is always walked. The heartbeat of a machine with ten
    containers (a kilobyte) decodes in 0.4 of the walked time (24 us against 59 us here)."""
    if type(raw) is not bytes or len(raw) > min(limits.max_string, limits.max_items, limits.max_nodes):
        return False
    if raw.count(b"[") + raw.count(b"{") > limits.max_depth or b"\\u" in raw:
        return False
    shapes = raw.translate(_SHAPES)
    return b"0000000000000000000" not in shapes and b"e000" not in shapes and b"e+000" not in shapes


def decode_json(raw: bytes | str, *, limits: Limits = DEFAULT, root: str = "body") -> Any:
    """A JSON document within ``limits`` (a ValidationError naming the field otherwise). A document ``quick``
    clears is decoded by the C scanner alone (duplicate keys still refused); any other is ``walked_json``."""
    _size(raw, limits, root)
    text = _text(raw, root, "JSON")
    if quick(raw, limits):
        try:
            return _decoded(_QUICK, text, limits, root)
        except _Fallback:
            pass
    return walked_json(text, limits=limits, root=root)


def walked_json(text: str, *, limits: Limits = DEFAULT, root: str = "body") -> Any:
    """``text`` decoded with a hook per number and walked by ``check``, which names the offending field."""
    return check(_decoded(_JSON, text, limits, root), limits=limits, root=root)


def _decoded(decoder: json.JSONDecoder, text: str, limits: Limits, root: str) -> Any:
    try:
        return decoder.decode(text)
    except RecursionError:
        raise ValidationError(f"not valid JSON: nested deeper than {limits.max_depth} levels", field=root) from None
    except json.JSONDecodeError as exc:
        raise ValidationError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                              field=root) from None
    except ValueError as exc:  # _Refused, and int()'s digit limit
        raise ValidationError(f"not valid JSON: {exc}", field=root) from None


# -- CBOR -------------------------------------------------------------------------------------------------------

_FLOAT = {25: (2, ">e"), 26: (4, ">f"), 27: (8, ">d")}


def _scan_cbor(data: bytes, limits: Limits, root: str) -> None:
    """Walk the CBOR item headers of ``data`` without building anything: refuse tags, simple values other than
    false/true/null, byte strings, non-text map keys, duplicate keys, over-long strings and collections,
    too deep or too many items, NaN/infinite floats, integers out of range, and trailing bytes."""
    n = len(data)
    pos = 0
    nodes = 0
    max_nodes, max_string, max_items, max_depth = limits.max_nodes, limits.max_string, limits.max_items, limits.max_depth
    # each open container: [is_map, items (-1: indefinite), items done, key of the current value, keys seen,
    # path of the container, a key is due next]
    stack: list[list[Any]] = []

    def where() -> str:
        if not stack:
            return root
        top = stack[-1]
        if top[0]:  # a map: its own path while a key is due, the key's path while its value is
            return _field(top[5] if top[6] else _child(top[5], top[3]), root)
        return _field(_child(top[5], top[2]), root)

    def bad(msg: str) -> ValidationError:
        return ValidationError(msg, field=where())

    def truncated() -> ValidationError:
        return ValidationError("not valid CBOR: the body ends inside an item", field=root)

    def chunks(major: int) -> bytes:
        """The chunks of an indefinite-length byte or text string, joined (each a definite string of ``major``)."""
        nonlocal pos
        out: list[bytes] = []
        total = 0
        while True:
            if pos >= n:
                raise truncated()
            cib = data[pos]
            pos += 1
            if cib == 0xFF:
                return b"".join(out)
            if cib >> 5 != major or (cib & 0x1F) >= 28:
                raise bad("not valid CBOR: an indefinite string holds a chunk of another kind")
            clen, pos = _arg(data, pos, cib & 0x1F, n)
            total += clen
            if clen < 0 or pos + clen > n:
                raise truncated()
            if major == 3 and total > max_string:
                raise bad(f"string longer than {max_string} bytes")
            out.append(data[pos:pos + clen] if major == 3 else b"")
            pos += clen

    def close() -> bool:
        """Close the innermost container, counting it in its parent; False when the document is complete."""
        stack.pop()
        if stack:
            _advance(stack, limits)
        return bool(stack)

    def text(arg: int, what: str) -> str:
        """The text string whose header announced ``arg`` bytes (-1: indefinite), checked to be UTF-8."""
        nonlocal pos
        if arg < 0:
            raw = chunks(3)
        else:
            if arg > max_string:
                raise bad(f"string of {arg} bytes; at most {max_string} are allowed")
            if pos + arg > n:
                raise truncated()
            raw = data[pos:pos + arg]
            pos += arg
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise bad(f"{what} is not valid UTF-8 text (lone surrogates included)") from None

    while True:
        if pos >= n:
            raise truncated()
        ib = data[pos]
        pos += 1
        if ib == 0xFF:  # break: closes the innermost indefinite-length container
            if not stack or stack[-1][1] != -1 or (stack[-1][0] and not stack[-1][6]):
                raise bad("not valid CBOR: unexpected break")
            if not close():
                break
            continue
        nodes += 1
        if nodes > max_nodes:
            raise ValidationError(f"the document holds more than {max_nodes} values", field=root)
        major = ib >> 5
        ai = ib & 0x1F
        if ai < 24:
            arg = ai
        elif ai < 28:
            size = 1 << (ai - 24)
            if pos + size > n:
                raise truncated()
            arg = int.from_bytes(data[pos:pos + size], "big")
            pos += size
        elif ai == 31 and 2 <= major <= 5:
            arg = -1
        elif major == 6:
            arg = -1
        else:
            raise bad("not valid CBOR: reserved or misplaced additional information")
        top = stack[-1] if stack else None
        if top is not None and top[6]:  # a map's key is due
            if major != 3:
                raise bad("map keys must be text strings")
            key = text(arg, "map key")
            if key in top[4]:
                raise bad(f"duplicate key {key[:64]!r}")
            top[4].add(key)
            top[3] = key
            top[6] = False
            continue  # the value of this key comes next
        if major == 0:
            if arg >= INT_BOUND:
                raise bad("integer out of range (|n| must be below 2**63)")
        elif major == 1:
            if arg + 1 >= INT_BOUND:
                raise bad("integer out of range (|n| must be below 2**63)")
        elif major == 3:
            text(arg, "string")
        elif major == 4 or major == 5:
            if len(stack) >= max_depth:
                raise bad(f"nested deeper than {max_depth} levels")
            if arg > max_items:
                raise bad(f"{arg} entries; at most {max_items} are allowed")
            if arg != 0:  # an empty container is a finished value
                stack.append([major == 5, arg, 0, None, set(), where() if stack else "", major == 5])
                continue
        elif major == 7:
            if 25 <= ai <= 27:
                size = 1 << (ai - 24)
                value = struct.unpack(_FLOAT[ai][1], data[pos - size:pos])[0]
                if not math.isfinite(value):
                    raise bad(f"{value} is not a finite number")
            elif ai < 20 or ai > 22:
                raise bad("CBOR simple values other than false, true and null are not allowed"
                          + (" (undefined)" if ai == 23 else ""))
        elif major == 6:
            tag = arg if arg >= 0 else "?"
            if tag in (2, 3):
                raise bad(f"integer out of range (|n| must be below 2**63; CBOR tag {tag}, a bignum, is not allowed)")
            raise bad(f"CBOR tags are not allowed (tag {tag})")
        else:  # major 2
            if not limits.bytes_ok:
                raise bad("byte strings have no JSON equivalent")
            if arg < 0:
                chunks(2)
            else:
                if pos + arg > n:
                    raise truncated()
                pos += arg
        if top is None:
            break
        # one more value in the innermost container (inline: the common case)
        if top[0]:
            top[6] = True
        top[2] += 1
        if top[1] < 0:
            if top[2] > max_items:
                raise ValidationError(f"more than {max_items} entries", field=top[5] or root)
        elif top[2] >= top[1]:
            if not close():
                break
    if pos != n:
        raise ValidationError(f"not valid CBOR: {n - pos} bytes after the end of the value", field=root)


def _advance(stack: list[list[Any]], limits: Limits) -> None:
    """One value of the innermost container is complete: count it, and close every container that is full."""
    while stack:
        top = stack[-1]
        if top[0]:
            top[6] = True  # a key comes next
        top[2] += 1
        if top[1] != -1 and top[2] >= top[1]:
            stack.pop()
            continue
        if top[1] == -1 and top[2] > limits.max_items:
            raise ValidationError(f"more than {limits.max_items} entries", field=top[5] or "body")
        return


def _arg(data: bytes, pos: int, ai: int, n: int) -> tuple[int, int]:
    """The header's argument and the position after it; (-1, pos) when the data ends first."""
    if ai < 24:
        return ai, pos
    size = {24: 1, 25: 2, 26: 4, 27: 8}.get(ai)
    if size is None or pos + size > n:
        return -1, pos
    return int.from_bytes(data[pos:pos + size], "big"), pos + size


def _refuse_tag(decoder: Any, tag: Any) -> Any:
    raise _Refused(f"CBOR tags are not allowed (tag {tag.tag})")


def decode_cbor(raw: bytes, *, limits: Limits = DEFAULT, root: str = "body") -> Any:
    _size(raw, limits, root)
    data = bytes(raw)
    if not data:
        raise ValidationError("not valid CBOR: empty", field=root)
    _scan_cbor(data, limits, root)
    try:
        value = cbor2.loads(data, tag_hook=_refuse_tag)
    except Exception as exc:  # the scan let it through, so this is a decoder's own refusal (invalid UTF-8...)
        raise ValidationError(f"not valid CBOR: {exc}", field=root) from None
    return check(value, limits=limits, root=root)


# -- YAML -------------------------------------------------------------------------------------------------------

class _YamlLoader(yaml.CSafeLoader if hasattr(yaml, "CSafeLoader") else yaml.SafeLoader):  # type: ignore[misc]
    """Safe loading of the JSON model only: no timestamps, binary, sets, omaps or custom tags."""


_ALLOWED_TAGS = ("null", "bool", "int", "float", "str", "seq", "map")
_YamlLoader.yaml_constructors = {k: v for k, v in yaml.SafeLoader.yaml_constructors.items()
                                 if k is None or k.rsplit(":", 1)[-1] in _ALLOWED_TAGS}
_YamlLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag.rsplit(":", 1)[-1] in _ALLOWED_TAGS]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_STD_TAG = "tag:yaml.org,2002:"


def _yaml_where(event: Any) -> str:
    mark = getattr(event, "start_mark", None)
    return f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""


def decode_yaml(raw: bytes | str, *, limits: Limits = DEFAULT, root: str = "body") -> Any:
    _size(raw, limits, root)
    text = _text(raw, root, "YAML")
    depth = nodes = docs = 0
    counts: list[int] = []
    keys: list[set[str] | None] = []  # per open collection: a mapping's scalar keys so far (None: a sequence)
    try:
        for ev in yaml.parse(text, Loader=_YamlLoader):
            if isinstance(ev, yaml.AliasEvent):
                raise ValidationError(f"YAML aliases (*{str(ev.anchor)[:40]}) are not allowed; "
                                      f"repeat the value{_yaml_where(ev)}", field=root)
            if isinstance(ev, yaml.DocumentStartEvent):
                docs += 1
                if docs > 1:
                    raise ValidationError(f"a single YAML document is expected{_yaml_where(ev)}", field=root)
            if isinstance(ev, yaml.NodeEvent):
                nodes += 1
                if nodes > limits.max_nodes:
                    raise ValidationError(f"the document holds more than {limits.max_nodes} values", field=root)
                tag = ev.tag
                if tag is not None and tag != "!" and not (tag.startswith(_STD_TAG)
                                                           and tag[len(_STD_TAG):] in _ALLOWED_TAGS):
                    raise ValidationError(f"YAML tag {tag[:60]} is not allowed{_yaml_where(ev)}", field=root)
                if counts:
                    seen = keys[-1]
                    if seen is not None and counts[-1] % 2 == 0 and isinstance(ev, yaml.ScalarEvent):
                        if ev.value in seen:  # PyYAML would keep the last silently; JSON and CBOR refuse too
                            raise ValidationError(f"duplicate key {ev.value[:64]!r}{_yaml_where(ev)}", field=root)
                        seen.add(ev.value)
                    counts[-1] += 1
                    if counts[-1] > 2 * limits.max_items:  # a map's keys and values are both nodes
                        raise ValidationError(f"a collection holds more than {limits.max_items} entries"
                                              f"{_yaml_where(ev)}", field=root)
                if isinstance(ev, yaml.ScalarEvent) and len(ev.value) > limits.max_string:
                    raise ValidationError(f"a string is longer than {limits.max_string} characters"
                                          f"{_yaml_where(ev)}", field=root)
                if isinstance(ev, yaml.CollectionStartEvent):
                    depth += 1
                    if depth > limits.max_depth:
                        raise ValidationError(f"nested deeper than {limits.max_depth} levels{_yaml_where(ev)}",
                                              field=root)
                    counts.append(0)
                    keys.append(set() if isinstance(ev, yaml.MappingStartEvent) else None)
            elif isinstance(ev, yaml.CollectionEndEvent):
                depth -= 1
                counts.pop()
                keys.pop()
        loader = _YamlLoader(text)
        try:
            value = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise ValidationError(f"YAML syntax error{where}: {getattr(exc, 'problem', None) or exc}",
                              field=root) from None
    except RecursionError:
        raise ValidationError(f"nested deeper than {limits.max_depth} levels", field=root) from None
    return check(value, limits=limits, root=root)


# -- TOML -------------------------------------------------------------------------------------------------------

def decode_toml(raw: bytes | str, *, limits: Limits = DEFAULT, root: str = "body") -> Any:
    _size(raw, limits, root)
    text = _text(raw, root, "TOML")
    try:
        value = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValidationError(f"TOML syntax error: {exc}", field=root) from None
    except RecursionError:
        raise ValidationError(f"nested deeper than {limits.max_depth} levels", field=root) from None
    return check(value, limits=limits, root=root)


# -- one entry per use ------------------------------------------------------------------------------------------

DECODERS: dict[str, Callable[..., Any]] = {"json": decode_json, "cbor": decode_cbor, "yaml": decode_yaml, "toml": decode_toml}


def decode(raw: bytes | str, fmt: str, *, limits: Limits = DEFAULT, root: str = "body") -> Any:
    """Decode ``raw`` as ``fmt`` (json, cbor, yaml or toml) through the gate."""
    try:
        decoder = DECODERS[fmt]
    except KeyError:
        raise ValidationError(f"unknown format {fmt!r}; use json, cbor, yaml or toml", field=root) from None
    return decoder(raw, limits=limits, root=root)


@functools.lru_cache(maxsize=16)
def _body_limits(max_bytes: int) -> Limits:
    """The default limits with this body size (one server has one --max-body: built once, not per request)."""
    return replace(DEFAULT, max_bytes=max_bytes)


def decode_body(raw: bytes, content_type: str, *, max_bytes: int | None = None) -> Any:
    """An HTTP request body: CBOR for ``application/cbor``, JSON otherwise."""
    limits = DEFAULT if max_bytes is None else _body_limits(max_bytes)
    if not raw:
        raise ValidationError("request body is empty", field="body")
    if content_type == "application/cbor":
        return decode_cbor(raw, limits=limits)
    return decode_json(raw, limits=limits)
