"""The monitoring files (monitoring/): what metrics they name, and their
PromQL, for the tests that hold them to the controller's real /metrics."""
import json
import re

from conftest import ROOT

MONITORING = ROOT / "monitoring"
RULES = MONITORING / "alerts.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
# Series Prometheus makes itself, not the controller.
PROMETHEUS_OWN = {"up"}


def dashboard_exprs():
    """Every PromQL expression of the dashboard, Grafana's $__rate_interval as 5m."""
    exprs = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        exprs += [target["expr"].replace("$__rate_interval", "5m") for target in panel.get("targets", [])]
    return exprs


def rule_exprs():
    import yaml
    return [rule["expr"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def metric_names(exprs):
    """The series names the expressions select: identifiers followed by a
    selector, a range or the end of a term, never functions or labels."""
    names = set()
    for expr in exprs:
        without_labels = re.sub(r"\{[^}]*\}", "{}", expr)
        without_labels = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", without_labels)
        for name in re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", without_labels):
            if name.startswith("smtp_border_") or name in PROMETHEUS_OWN:
                names.add(name)
    return names


def exported(name, families, samples):
    """Is `name`, as a query names it, in a /metrics exposition? Counters
    are queried as <family>_total, histograms as <family>_bucket/_count/_sum."""
    if name in samples or name in families:
        return True
    for suffix in ("_total", "_bucket", "_count", "_sum"):
        if name.endswith(suffix) and name[: -len(suffix)] in families:
            return True
    return False
