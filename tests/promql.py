"""Just enough PromQL reading for the deploy checks: which series and labels an expression names,
and the quantities an alert compares (tests/test_deploy.py, tests/e2e/test_prometheus.py).

The dashboard's and the alerts' expressions are read from deploy/, never copied into a test, so
a new panel or alert is checked without a test change.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "chat4all-workers.json"

_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "bool", "offset", "inf", "nan",
}  # fmt: skip
_GROUPING = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)"
_STRING = r'"(?:[^"\\]|\\.)*"'


def metric_names(expr: str) -> set[str]:
    """Series names in a PromQL expression: identifiers that are not functions, keywords, label
    names (inside {...} or by/on (...)), strings or durations."""
    expr = re.sub(_STRING, '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(_GROUPING, " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w$.])([a-zA-Z_:][\w:]*)\b(\s*\()?", expr):
        word, call = match.group(1), match.group(2)
        if not call and word.lower() not in _WORDS:
            names.add(word)
    return names


def label_names(expr: str) -> set[str]:
    """Labels an expression names: in matchers (`{role="x"}`) and groupings (`by (role)`)."""
    labels = set()
    for selector in re.findall(r"\{([^}]*)\}", re.sub(_STRING, '""', expr)):
        labels |= set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", selector))
    for group in re.findall(_GROUPING, expr):
        labels |= {name.strip() for name in group.split(",") if name.strip()}
    return labels


def template_labels(text: str) -> set[str]:
    """Labels a legend (`{{role}} p99`) or an alert annotation (`{{ $labels.role }}`) prints."""
    legend = re.findall(r"\{\{\s*([a-zA-Z_]\w*)\s*\}\}", text)
    annotation = re.findall(r"\$labels\.([a-zA-Z_]\w*)", text)
    return set(legend) | set(annotation)


def operands(expr: str) -> list[str]:
    """The quantities an alert compares: the expression split at its top-level `and`/`or`/
    `unless`, each without its trailing comparison with a number (`... > 0.1`). Each must return
    series for the alert to be able to fire."""
    parts, depth, start = [], 0, 0
    for match in re.finditer(r"[()]|\b(?:and|or|unless)\b", expr):
        token = match.group(0)
        if token == "(":
            depth += 1
        elif token == ")":
            depth -= 1
        elif depth == 0:
            parts.append(expr[start : match.start()])
            start = match.end()
    parts.append(expr[start:])
    comparison = r"\s*(?:==|!=|>=|<=|>|<)\s*(?:bool\s+)?[-+]?[\d.]+(?:e[-+]?\d+)?\s*$"
    return [re.sub(comparison, "", part.strip()) for part in parts]


@dataclass(frozen=True)
class Query:
    """One expression of deploy/: where it is, the PromQL, and what its text prints."""

    where: str
    expr: str
    prints: str = ""  # legendFormat or annotations


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alert_queries() -> list[Query]:
    return [
        Query(f"alert {r['alert']}", r["expr"], " ".join(r.get("annotations", {}).values()))
        for r in alert_rules()
    ]


def dashboard_queries() -> list[Query]:
    def walk(panels: list[dict[str, Any]]) -> Iterator[Query]:
        for panel in panels:
            for target in panel.get("targets", []):
                where = f"panel {panel.get('title')!r} ({target.get('refId', '?')})"
                yield Query(where, target["expr"], target.get("legendFormat", ""))
            yield from walk(panel.get("panels", []))

    return list(walk(json.loads(DASHBOARD.read_text())["panels"]))


def dashboard_variables() -> list[str]:
    """The template variables the dashboard defines (`$worker`, ...)."""
    return [v["name"] for v in json.loads(DASHBOARD.read_text())["templating"]["list"]]
