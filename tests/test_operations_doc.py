"""docs/operations.md and etc/grafana-mtlsgw.json name only metrics the gateway exports, and the
docs describe every one of them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from gateway.metrics import GatewayMetrics

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "operations.md"
DASHBOARD = ROOT / "etc" / "grafana-mtlsgw.json"
METRIC = re.compile(r"\b((?:mtlsgw|process)_[a-z_]+)\b")
# PromQL words that look like metric names but are not.
_FUNCTIONS = {"histogram_quantile", "label_values"}


def exported() -> tuple[set[str], set[str]]:
    """(series names a scrape can hold, mtlsgw family names) of a single-process gateway."""
    series: set[str] = set()
    families: set[str] = set()
    for family in GatewayMetrics("single").registry.collect():
        name = family.name
        families.add(name)
        if family.type == "counter":
            series.add(f"{name}_total")
        elif family.type == "histogram":
            series |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
        else:
            series.add(name)
    return series, {f for f in families if f.startswith("mtlsgw_")}


def names_in(expr: str) -> set[str]:
    return set(METRIC.findall(expr)) - _FUNCTIONS


def alerting_rules() -> list[dict]:
    text = DOC.read_text()
    section = text.split("## Alerting rules", 1)[1].split("\n## ", 1)[0]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    return [rule for group in yaml.safe_load(block)["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_alerting_rules_cover_the_issue_and_use_exported_metrics() -> None:
    series, _ = exported()
    rules = alerting_rules()
    assert {r["alert"] for r in rules} == {
        "MtlsgwCertificateExpiresSoon", "MtlsgwCrlNextUpdatePassed",
        "MtlsgwHandshakeFailureRatio", "Mtlsgw5xxRatio", "MtlsgwReloadFailed"}
    for rule in rules:
        used = names_in(rule["expr"])
        assert used and used <= series, (rule["alert"], used - series)
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
    expiry = next(r for r in rules if r["alert"] == "MtlsgwCertificateExpiresSoon")
    assert "14 * 86400" in expiry["expr"]


def test_the_dashboard_uses_only_exported_metrics() -> None:
    series, families = exported()
    exprs = dashboard_exprs()
    used: set[str] = set()
    for expr in exprs:
        names = names_in(expr)
        assert names, expr
        assert names <= series, (expr, names - series)
        used |= names
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "mtlsgw"
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    # Most of what the gateway exports is on it.
    shown = {family for family in families if any(n.startswith(family) for n in used)}
    assert len(shown) >= len(families) - 2, families - shown


@pytest.mark.parametrize("family", sorted(exported()[1]))
def test_every_metric_is_documented(family: str) -> None:
    # Counters are documented with their _total series name.
    series = family + "_total" if family + "_total" in exported()[0] else family
    assert f"| `{series}` |" in DOC.read_text()
