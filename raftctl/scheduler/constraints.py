"""Placement constraints on a machine's attributes (``labels.ssd``, ``fault_domain.zone``, ``id``, ...).

Regex patterns run on RE2 (time linear in the pattern and the text, never backtracking). Compiled patterns and
match results are cached, bounded, keyed by pattern (and text): the scheduler compiles a job's pattern once,
not once per machine, and many machines sharing one label value cost one match."""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import msgspec
import re2  # google-re2: linear-time matching, no backtracking (pure computation)

from raftctl.statemachine.records import Constraint, Machine

MAX_REGEX_LENGTH = 256          # characters of a constraint pattern
REGEX_MAX_MEM = 1 << 20         # bytes RE2 may use per compiled pattern (program + DFA cache)
REGEX_CACHE = 128               # compiled patterns kept
MATCH_CACHE = 4096              # (pattern, text) results kept
MATCH_CACHE_TEXT = 1024         # ... for texts up to this many characters


class RegexError(ValueError):
    """A constraint pattern RE2 cannot run (too long, backreference, look-around, too large...)."""


MACHINE_FIELDS = frozenset(Machine.__struct_fields__)


def attr_value(m: Machine, attr: str) -> str | None:
    """`labels.ssd`, `fault_domain.zone`, `id`, `address`, `runtime` (a field of the machine's wire form)."""
    head, _, rest = attr.partition(".")
    if head not in MACHINE_FIELDS:
        return None
    cur: Any = getattr(m, head)
    for part in rest.split(".") if rest else ():
        if isinstance(cur, msgspec.Struct):
            cur = getattr(cur, part, msgspec.UNSET) if part in cur.__struct_fields__ else msgspec.UNSET
        elif isinstance(cur, dict):
            cur = cur.get(part, msgspec.UNSET)
        else:
            return None
    if cur is msgspec.UNSET or isinstance(cur, (dict, list, tuple, msgspec.Struct)):
        return None
    return str(cur)


def _re2_options() -> Any:
    opts = re2.Options()
    opts.log_errors = False
    opts.max_mem = REGEX_MAX_MEM
    return opts


_OPTIONS = _re2_options()


@lru_cache(maxsize=REGEX_CACHE)
def compile_regex(pattern: str) -> Any:
    """The compiled RE2 pattern, or RegexError saying why it cannot be used."""
    if not isinstance(pattern, str):
        raise RegexError(f"must be a string, not {type(pattern).__name__}")
    if len(pattern) > MAX_REGEX_LENGTH:
        raise RegexError(f"is {len(pattern)} characters long; at most {MAX_REGEX_LENGTH} are allowed")
    try:
        return re2.compile(pattern, options=_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise RegexError(f"is not a regular expression RE2 accepts: {reason}") from None
    except (UnicodeError, TypeError, ValueError) as exc:
        raise RegexError(f"is not a regular expression RE2 accepts: {exc}") from None


def regex_search(pattern: str, text: str) -> bool:
    """Whether pattern occurs in text (re.search semantics). A pattern RE2 cannot run, e.g. one stored before
    patterns were validated with RE2, matches nothing: the constraint fails closed."""
    if len(text) <= MATCH_CACHE_TEXT:
        return _cached_search(pattern, text)
    return _search(pattern, text)  # long values are not kept alive by the cache


def _search(pattern: str, text: str) -> bool:
    try:
        return compile_regex(pattern).search(text) is not None
    except (RegexError, UnicodeError):
        return False


_cached_search = lru_cache(maxsize=MATCH_CACHE)(_search)


def constraint_ok(m: Machine, c: Constraint) -> bool:
    v = attr_value(m, c.attr)
    op, want = c.op, c.value
    if op == "exists":
        return v is not None
    if op == "not_exists":
        return v is None
    if op == "==":
        return bool(v == want)
    if op == "!=":
        return bool(v != want)
    if op in ("in", "not_in"):
        found = isinstance(want, tuple) and v in want
        return found if op == "in" else not found
    if op == "regex":
        return v is not None and isinstance(want, str) and regex_search(want, v)
    return False
