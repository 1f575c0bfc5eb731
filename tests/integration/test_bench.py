"""The benchmark script runs end to end at a small size. It measures; it does
not judge: no assertion here is about time."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from smtp_border.compiler import compile_switch
from smtp_border.policy import load_policy

pytestmark = [
    pytest.mark.mininet,
    pytest.mark.skipif(os.geteuid() != 0, reason="Open vSwitch and Mininet need root"),
]


def test_bench_quick(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(ROOT / "mininet" / "bench.py"), "--quick", "--json", str(out)],
                            capture_output=True, text=True, timeout=900, cwd=tmp_path)
    print(result.stdout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert [r["exceptions"] for r in figures["full_install"]] == [10, 100]
    assert all(r["flows"] > r["exceptions"] for r in figures["full_install"])
    assert [r["exceptions"] for r in figures["one_change"]] == [10, 100]
    assert all(len(r["hello_to_barrier_all_ms"]) == len(r["ovs_ofctl_bundle_all_ms"]) == 5 for r in figures["full_install"])
    firewall = figures["rest_firewall"]
    assert firewall["rest_firewall_flows_added"] == firewall["rules"] == 20
    assert min(firewall["smtp_border_s"], firewall["smtp_border_batch_s"], firewall["http_request_floor_s"]) > 0
    data_plane = figures["data_plane"]
    assert data_plane["policy_gbit_s"] > 0 and data_plane["normal_only_gbit_s"] > 0
    assert len(data_plane["throughput_ratio_by_round"]) == len(data_plane["policy_gbit_s_all"]) == data_plane["rounds"] == 2
    assert figures["scale"]["shipped_policy_flows"] == len(compile_switch(load_policy(ROOT / "policy.yaml"), 1))
    convergence = figures["convergence"][0]
    assert convergence["exceptions"] == 10 and len(convergence["reconnect_in_sync_all_ms"]) == 2
    assert len(convergence["audit_full_all_ms"]) == 2 and convergence["del_flows_repaired_ms"] > 0
    assert convergence["switches_get_all_ms"] and convergence["switches_get_p99_ms"] > 0
    cold = figures["cold"]
    assert [r["exceptions"] for r in cold] == [100, 1000]
    for row in cold:
        assert min(row["check_s"], row["start_to_api_s"], row["first_install_ms"], row["ovs_ofctl_bundle_ms"],
                   row["reload_one_line_ms"], row["controller_rss_mib"]) > 0
        assert len(row["installs_all_ms"]) == 3 and len(row["reloads_all_ms"]) == len(row["floors_all_ms"]) == 2
        assert row["flows"] > row["exceptions"]
    fleet = figures["fleet"]
    assert [(r["switches"], r["replicas"]) for r in fleet] == [(4, 1), (4, 2)]
    for row in fleet:
        assert row["all_in_sync_s"] > 0 and len(row["changes_all_ms"]) == 4 and len(row["controller_rss_mib"]) == row["replicas"]
    silent = figures["silent_in_fleet"]
    assert [r["silent"] for r in silent] == [0, 1] and all(r["others_enforced_every_time"] for r in silent)
    more = figures["more_forever"]
    assert more["closed_after_s"] is not None and more["good_switch_enforced"]
    stacks = figures["stacks"]
    assert [r["stack"] for r in stacks] == ["this"] and stacks[0]["python"] == sys.version.split()[0]
    assert min(stacks[0]["install_10_ratio"], stacks[0]["add_p50_ms"], stacks[0]["start_to_api_s"]) > 0
    assert subprocess.run(["ovs-vsctl", "list-br"], capture_output=True, text=True).stdout == ""
