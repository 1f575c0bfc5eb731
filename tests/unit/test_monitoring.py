"""The alert rules and the dashboard (monitoring/): valid for Prometheus,
behaving as their tests say (promtool, Debian's prometheus package), and
naming only metrics the controller exports (the names are checked against a
running controller in tests/integration/test_audit_mininet.py, and against
the app's collector in tests/unit/test_delivery.py)."""
import shutil
import subprocess

import pytest

import monitoring
from monitoring import dashboard_exprs, exported, metric_names

promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) missing")


@promtool
def test_the_alert_rules_are_valid_and_behave_as_their_tests_say():
    checked = subprocess.run(["promtool", "check", "rules", str(monitoring.RULES)], capture_output=True, text=True)
    assert checked.returncode == 0 and "SUCCESS: 9 rules found" in checked.stdout, checked.stdout + checked.stderr
    tested = subprocess.run(["promtool", "test", "rules", "alerts.test.yml"], cwd=monitoring.MONITORING,
                            capture_output=True, text=True)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


@promtool
def test_every_dashboard_query_is_valid_promql(tmp_path):
    """promtool parses rules' expressions: the dashboard's queries go in as
    recording rules (Grafana's $__rate_interval as 5m)."""
    import yaml
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:query{i}", "expr": e}
                                                        for i, e in enumerate(exprs)]}]}
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(rules))
    checked = subprocess.run(["promtool", "check", "rules", str(tmp_path / "dashboard.yml")], capture_output=True,
                             text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_name_finder_finds_names_and_only_names():
    assert metric_names(['max by (switch) (smtp_border_switch_in_sync{job="x"}) == 0',
                         'histogram_quantile(0.5, sum by (le) (rate(smtp_border_change_seconds_bucket[5m])))',
                         'up{job="smtp-border"} == 0']) == {"smtp_border_switch_in_sync",
                                                             "smtp_border_change_seconds_bucket", "up"}
    assert exported("smtp_border_change_seconds_bucket", {"smtp_border_change_seconds"}, set())
    assert not exported("smtp_border_nothing_total", {"smtp_border_change_seconds"}, set())
