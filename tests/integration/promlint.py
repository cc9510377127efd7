"""Prometheus' metric naming rules (the ones `promtool check metrics` applies), written out here because
promtool is not available offline. Input: the text exposition format, as scraped."""
from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

SNAKE = re.compile(r"^[a-z_][a-z0-9_]*$")
TYPE_WORDS = {"counter", "gauge", "histogram", "summary", "untyped"}
RESERVED_SUFFIXES = ("_count", "_sum", "_bucket")
# Name components that are not base units, with the base unit to use instead.
NOT_BASE = {
    "milliseconds": "seconds", "microseconds": "seconds", "nanoseconds": "seconds", "minutes": "seconds",
    "hours": "seconds", "days": "seconds", "weeks": "seconds", "kilobytes": "bytes", "megabytes": "bytes",
    "gigabytes": "bytes", "terabytes": "bytes", "kibibytes": "bytes", "mebibytes": "bytes", "gibibytes": "bytes",
    "bits": "bytes", "fahrenheit": "celsius",
    "kilometers": "meters", "millimeters": "meters", "centimeters": "meters", "percent": "ratio",
}
# Abbreviated units (a component on its own): spell the base unit out.
ABBREVIATIONS = {"s", "sec", "secs", "ms", "us", "ns", "min", "mins", "hr", "hrs", "b", "kb", "mb", "gb", "tb",
                 "kib", "mib", "gib", "km", "mm", "cm", "pct"}


def lint(text: str) -> list[str]:
    """Every naming problem in a /metrics body, as "<name>: <problem>" lines; [] when it passes."""
    problems: list[str] = []
    # As exposed: the parser renames a counter's samples to <name>_total whatever the text said.
    exposed = {re.split(r"[{\s]", line, maxsplit=1)[0] for line in text.splitlines()
               if line.strip() and not line.startswith("#")}
    typed = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ") and len(line.split()) > 3}
    for fam in text_string_to_metric_families(text):
        name, kind = fam.name, fam.type

        def bad(why: str) -> None:
            problems.append(f"{name} ({kind}): {why}")

        if not (fam.documentation or "").strip():
            bad("no help text")
        if ":" in name:
            bad("metric names should not contain ':' (reserved for recording rules)")
        if not SNAKE.match(name):
            bad("metric names should be written in snake_case")
        parts = name.split("_")
        for word in TYPE_WORDS & set(parts):
            bad(f"metric name should not include the type {word!r}")
        for part in parts:
            if part in NOT_BASE:
                bad(f"use the base unit {NOT_BASE[part]!r} instead of {part!r}")
            if part in ABBREVIATIONS:
                bad(f"metric names should not contain abbreviated units ({part!r})")
        sample_names = {s.name for s in fam.samples}
        if kind == "counter":
            if name in exposed or name in typed or f"{name}_total" not in exposed | typed:
                bad("counter metrics should have the _total suffix")
        else:
            for s in sample_names | {name}:
                if s.endswith("_total"):
                    bad(f"non-counter metrics should not have the _total suffix ({s})")
        if kind not in ("histogram", "gaugehistogram", "summary"):
            for suffix in RESERVED_SUFFIXES:
                if any(s.endswith(suffix) for s in sample_names | {name}):
                    bad(f"non-histogram and non-summary metrics should not have the {suffix} suffix")
        labels = {k for s in fam.samples for k in s.labels}
        for label in labels:
            if not SNAKE.match(label):
                bad(f"label names should be written in snake_case ({label!r})")
        if kind not in ("histogram", "gaugehistogram") and "le" in labels:
            bad("non-histogram metrics should not have the 'le' label")
        if kind != "summary" and "quantile" in labels:
            bad("non-summary metrics should not have the 'quantile' label")
    return problems
