"""`atsc run` end to end: scenarios, any SUMO network, .sumocfg files, bad input, Dask."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _runner_helpers import generated_network, short_case

from sim.batch import dask_executor, run_batch

REQUIRED = {"scenario", "controller", "seed", "vehicle_delay_s", "pedestrian_delay_s",
            "bus_delay_s", "stops_per_vehicle", "throughput_veh_h", "teleports", "collisions",
            "co2_kg", "run_dir"}


def atsc(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller.cli", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.mark.sumo
def test_run_scenario_writes_kpis_table_and_report(tmp_path: Path) -> None:
    out = tmp_path / "am"
    res = atsc("run", "morning_peak", "--controller", "fixed", "--controller", "actuated",
               "--seeds", "2", "--end", "600", "--warmup", "200", "--out", str(out))
    assert res.returncode == 0, res.stderr
    records = json.loads((out / "kpis.json").read_text())
    assert len(records) == 4
    assert {(r["controller"], r["seed"]) for r in records} == {
        ("fixed", 1), ("fixed", 2), ("actuated", 1), ("actuated", 2)}
    for r in records:
        assert set(r) >= REQUIRED
        run_dir = Path(r["run_dir"])
        assert (run_dir / "tripinfo.xml").exists() and (run_dir / "tls_states.xml").exists()
    # Same seed, same demand: the route files of both controllers are identical.
    by = {(r["controller"], r["seed"]): Path(r["run_dir"]) for r in records}
    assert ((by[("fixed", 1)] / "morning_peak.rou.xml").read_bytes()
            == (by[("actuated", 1)] / "morning_peak.rou.xml").read_bytes())
    assert "fixed" in res.stdout and "actuated" in res.stdout
    html = (out / "report.html").read_text()
    assert "<table" in html and "data:image/png;base64" in html
    assert "progress" in res.stderr or "[1/4]" in res.stderr


@pytest.mark.sumo
def test_any_network_runs_every_baseline(tmp_path: Path) -> None:
    net, routes, tls = generated_network(tmp_path)
    out = tmp_path / "grid"
    res = atsc("run", "--net", str(net), "--routes", str(routes), "--tls", tls,
               "--controller", "fixed", "--controller", "actuated", "--controller",
               "delay_based", "--controller", "max-pressure", "--end", "600", "--warmup", "100",
               "--out", str(out))
    assert res.returncode == 0, res.stderr
    records = json.loads((out / "kpis.json").read_text())
    assert [r["controller"] for r in records] == ["fixed", "actuated", "delay_based",
                                                  "max-pressure"]
    for r in records:
        assert r["vehicles_completed"] > 20
        info = json.loads((Path(r["run_dir"]) / "run.json").read_text())
        assert info["monitor_faults"] == []
        # Default detectors were placed and the fixed plan came from the route files.
        assert info["webster"]["total_flow_ratio"] > 0


@pytest.mark.sumo
def test_sumocfg_inputs_and_window_are_honoured(tmp_path: Path) -> None:
    net, routes, tls = generated_network(tmp_path)
    cfg = tmp_path / "mine.sumocfg"
    cfg.write_text(
        "<configuration><input>"
        f'<net-file value="{net.name}"/><route-files value="{routes.name}"/>'
        '</input><time><begin value="0"/><end value="700"/></time></configuration>'
    )
    out = tmp_path / "cfg"
    res = atsc("run", "--sumocfg", str(cfg), "--tls", tls, "--controller", "fixed",
               "--end", "400", "--out", str(out))
    assert res.returncode == 0, res.stderr
    (record,) = json.loads((out / "kpis.json").read_text())
    info = json.loads((Path(record["run_dir"]) / "run.json").read_text())
    assert info["sim_seconds"] == 400  # --end overrides the configuration's 700 s
    assert record["vehicles_completed"] > 10


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--net", "nowhere.net.xml", "--routes", "r.rou.xml", "--tls", "x"],
         "nowhere.net.xml"),
        (["run", "no_such_scenario"], "no_such_scenario"),
        (["run", "morning_peak", "--controller", "psychic"], "psychic"),
        (["run", "morning_peak", "--begin", "900", "--end", "300"], "end"),
        (["run", "morning_peak", "--workers", "0"], "--workers"),
    ],
)
def test_bad_input_is_one_line_exit_2(args: list[str], needle: str) -> None:
    res = atsc(*args, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0]
    assert "Traceback" not in res.stderr


@pytest.mark.sumo
def test_malformed_network_unknown_tls_and_bad_scenario_file(tmp_path: Path) -> None:
    net, routes, tls = generated_network(tmp_path)
    bad_net = tmp_path / "bad.net.xml"
    bad_net.write_text("<net><edge id='a'")
    cases = [
        (["run", "--net", str(bad_net), "--routes", str(routes), "--tls", tls], "bad.net.xml"),
        (["run", "--net", str(net), "--routes", str(routes), "--tls", "Z9"], "Z9"),
    ]
    scenario = tmp_path / "broken.toml"
    text = Path("scenarios/morning_peak.toml").read_text()
    scenario.write_text(text.replace("end_s = ", "end_s = -", 1))
    cases.append((["run", str(scenario)], "broken.toml"))
    for args, needle in cases:
        res = atsc(*args, timeout=120)
        assert res.returncode == 2, (args, res.stderr)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and needle in lines[0], res.stderr
        assert "Traceback" not in res.stderr


@pytest.mark.sumo
def test_a_run_sumo_refuses_is_one_line_exit_1(tmp_path: Path) -> None:
    net, _, tls = generated_network(tmp_path)
    routes = tmp_path / "bad.rou.xml"
    routes.write_text('<routes><flow id="x" from="NOPE" to="B1C1" begin="0" end="100" '
                      'vehsPerHour="100"/></routes>')
    res = atsc("run", "--net", str(net), "--routes", str(routes), "--tls", tls,
               "--controller", "fixed", "--controller", "actuated", "--seeds", "2",
               "--end", "300", "--warmup", "50", "--no-report", "--out", str(tmp_path / "o"))
    assert res.returncode == 1, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("atsc: error:")]
    assert len(errors) == 1
    assert "SUMO stopped the run" in errors[0] and "'NOPE'" in errors[0]
    assert "Traceback" not in res.stderr


@pytest.mark.sumo
@pytest.mark.slow
def test_batch_runs_on_a_local_dask_cluster(tmp_path: Path) -> None:
    case = short_case(end_s=500.0, warmup_s=100.0)
    with dask_executor(None, local_workers=2) as executor:
        records = run_batch([case], ["fixed", "max-pressure"], [1, 2], tmp_path,
                            executor=executor, log=lambda _m: None)
    assert [(r.controller, r.seed) for r in records] == [
        ("fixed", 1), ("fixed", 2), ("max-pressure", 1), ("max-pressure", 2)]
    assert all(r.vehicles_completed > 0 for r in records)
