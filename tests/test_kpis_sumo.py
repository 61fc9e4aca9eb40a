"""KPIs from a real SUMO run, checked against an independent reading of its outputs."""

from __future__ import annotations

import math
import statistics
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import sumolib
from _kpis_helpers import (
    TLS_ID,
    UNSAFE_ROUTES,
    VTYPE_CLASSES,
    build_net,
    run_sumo,
    write_queues,
)

from controller.errors import ConfigError
from sim.kpis import (
    RunKpis,
    compute_kpis,
    kpi_sumo_args,
    read_kpis_json,
    read_tls_states,
    summary_table,
    tls_states_additional,
    vtype_classes_from_xml,
    write_kpis_json,
)

pytestmark = pytest.mark.sumo

WARMUP_S = 20.0
END_S = 220.0
OCCUPANCY = {"linienbus": 25.0, "pkw": 1.3}
MODE_OF = {"pkw": "car", "lkw": "truck", "linienbus": "bus", "rad": "bicycle"}


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_net(tmp_path_factory.mktemp("net"))


@pytest.fixture(scope="module")
def run(net: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_sumo(net, tmp_path_factory.mktemp("run"), end_s=300)


def _kpis(run_dir: Path, warmup_s: float = WARMUP_S) -> RunKpis:
    return compute_kpis(
        run_dir, scenario="grid", controller="fixed", seed=1, warmup_s=warmup_s, end_s=END_S,
        occupancy=OCCUPANCY, vtype_classes=VTYPE_CLASSES,
    )


def _reference(run_dir: Path, warmup_s: float) -> dict[str, float]:
    """Independent KPIs via sumolib's parser (not sim.kpis' own code)."""
    trips = list(sumolib.output.parse(str(run_dir / "tripinfo.xml"), "tripinfo"))
    people = list(sumolib.output.parse(str(run_dir / "tripinfo.xml"), "personinfo"))
    window = [t for t in trips if warmup_s <= float(t.depart) < END_S]
    done = [t for t in window if float(t.arrival) >= 0]
    loss = {m: [float(t.timeLoss) for t in done if MODE_OF[t.vType] == m] for m in MODE_OF.values()}
    walkers = [
        p for p in people
        if warmup_s <= float(p.depart) < END_S and float(p.duration) >= 0
    ]
    ped = [sum(float(w.timeLoss) for w in p.walk) for p in walkers]
    weights = [OCCUPANCY.get(t.vType, 1.0) for t in done]
    person = (
        sum(w * float(t.timeLoss) for w, t in zip(weights, done, strict=True)) + sum(ped)
    ) / (sum(weights) + len(ped))
    vehicle = statistics.fmean(float(t.timeLoss) for t in done)
    insertion = statistics.fmean(float(t.departDelay) for t in done)
    return {
        "vehicle_delay_s": vehicle,
        "insertion_delay_s": insertion,
        "total_vehicle_delay_s": vehicle + insertion,
        **{f"{m}_delay_s": statistics.fmean(v) for m, v in loss.items()},
        "pedestrian_delay_s": statistics.fmean(ped),
        "person_delay_s": person,
        "stops_per_vehicle": statistics.fmean(float(t.waitingCount) for t in done),
        "vehicles_completed": len(done),
        "persons_completed": len(walkers),
        "throughput_veh_h": sum(
            1 for t in trips if warmup_s <= float(t.arrival) <= END_S
        ) * 3600 / (END_S - warmup_s),
        "trips_incomplete": sum(1 for t in trips if float(t.arrival) < 0)
        + sum(1 for p in people if float(p.duration) < 0 and float(p.depart) >= 0),
        "co2_kg": sum(float(t.emissions[0].CO2_abs) for t in window) / 1e6,
        "nox_g": sum(float(t.emissions[0].NOx_abs) for t in window) / 1e3,
        "fuel_l": sum(float(t.emissions[0].fuel_abs) for t in window) / 1e3,
    }


def test_kpi_sumo_args_point_into_run_dir(tmp_path: Path) -> None:
    args = kpi_sumo_args(tmp_path)
    opts = dict(zip(args[::2], args[1::2], strict=True))
    assert opts["--tripinfo-output"] == str(tmp_path / "tripinfo.xml")
    assert opts["--statistic-output"] == str(tmp_path / "statistics.xml")
    assert opts["--collision-output"] == str(tmp_path / "collisions.xml")
    assert opts["--tripinfo-output.write-unfinished"] == "true"
    assert opts["--device.emissions.probability"] == "1"
    assert opts["--collision.check-junctions"] == "true"
    assert opts["--collision.action"] == "warn"


def test_run_produces_all_files_and_tls_states(net: Path, run: Path) -> None:
    for name in ("tripinfo.xml", "statistics.xml", "collisions.xml", "tls_states.xml"):
        assert (run / name).stat().st_size > 0, name
    times, states = read_tls_states(run / "tls_states.xml")
    assert len(times) == len(states) > 250
    program = ET.parse(net).find(
        f"tlLogic[@id='{TLS_ID}']"
    )
    assert program is not None
    phase_states = {p.get("state") for p in program.iter("phase")}
    # Every logged state is one of the program's phases, and all phases occur.
    assert set(states) == phase_states


def test_kpis_match_independent_calculation(run: Path) -> None:
    kpis = _kpis(run)
    ref = _reference(run, WARMUP_S)
    for name, expected in ref.items():
        got = getattr(kpis, name)
        assert got is not None, name
        assert math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-9), (name, got, expected)
    assert kpis.vehicles_completed > 30
    assert kpis.persons_completed > 3
    assert kpis.trips_by_mode["bus"] >= 2


def test_statistics_counts_come_from_sumo(run: Path) -> None:
    kpis = _kpis(run)
    stats = {e.tag: e.attrib for e in ET.parse(run / "statistics.xml").getroot()}
    assert kpis.teleports == int(stats["teleports"]["total"])
    assert kpis.collisions == int(stats["safety"]["collisions"])
    assert kpis.emergency_stops == int(stats["safety"]["emergencyStops"])


def test_warmup_excludes_early_trip(run: Path) -> None:
    trips = list(sumolib.output.parse(str(run / "tripinfo.xml"), "tripinfo"))
    early = [t for t in trips if float(t.depart) < WARMUP_S and float(t.arrival) >= 0]
    assert any(t.id == "early" for t in early)
    with_warmup = _kpis(run, WARMUP_S)
    without = _kpis(run, 0.0)
    assert without.vehicles_completed - with_warmup.vehicles_completed == len(early)
    assert without.vehicle_delay_s == pytest.approx(_reference(run, 0.0)["vehicle_delay_s"])
    # The early, unimpeded car lowers the mean only when it is counted.
    assert without.vehicle_delay_s != with_warmup.vehicle_delay_s


def test_queues_csv_window_mean_p95_max(run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    for name in ("tripinfo.xml", "statistics.xml"):
        (run_dir / name).write_bytes((run / name).read_bytes())
    # Approach N: 0..99 m one per second from t=20; a huge queue before warm-up.
    rows = [(0.0, "N", 5000.0, 800), (10.0, "S", 7.0, 1)]
    rows += [(WARMUP_S + i, "N", float(i), i // 7) for i in range(100)]
    rows += [(WARMUP_S + i, "S", 12.0, 2) for i in range(100)]
    rows += [(END_S + 1, "S", 999.0, 150)]
    write_queues(run_dir, rows)
    kpis = _kpis(run_dir)
    assert kpis.queue_mean_m == pytest.approx({"N": 49.5, "S": 12.0})
    assert kpis.queue_p95_m["N"] == pytest.approx(94.05)
    assert kpis.queue_max_m == pytest.approx(99.0)


def test_bad_queues_csv_names_file(run: Path, tmp_path: Path) -> None:
    for name in ("tripinfo.xml", "statistics.xml"):
        (tmp_path / name).write_bytes((run / name).read_bytes())
    (tmp_path / "queues.csv").write_text("t,approach,queue\n1,N,2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"queues\.csv.*header"):
        _kpis(tmp_path)
    (tmp_path / "queues.csv").write_text(
        "time_s,approach,queue_m,halting_veh\n1,N,many,2\n", encoding="utf-8"
    )
    with pytest.raises(ConfigError, match=r"queues\.csv.*line 2"):
        _kpis(tmp_path)


def test_unknown_vtype_and_bad_window_are_config_errors(run: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tripinfo\.xml: vType '\w+' has no known vClass"):
        compute_kpis(run, scenario="g", controller="c", seed=1, warmup_s=0, end_s=100,
                     occupancy={})
    with pytest.raises(ConfigError, match="warmup_s < end_s"):
        _kpis(run, warmup_s=END_S + 1)
    with pytest.raises(ConfigError, match=r"tripinfo\.xml.*missing"):
        _kpis(tmp_path)
    (tmp_path / "tripinfo.xml").write_text("<tripinfos><tripinfo id=", encoding="utf-8")
    with pytest.raises(ConfigError, match="malformed XML"):
        _kpis(tmp_path)


def test_vtype_classes_from_route_file(run: Path) -> None:
    classes = vtype_classes_from_xml([run / "routes.rou.xml"])
    assert classes == {k: v for k, v in VTYPE_CLASSES.items() if k != "rotlicht"}


def test_collisions_and_teleports_are_reported(net: Path, tmp_path: Path) -> None:
    crash = run_sumo(net, tmp_path / "crash", routes=UNSAFE_ROUTES, end_s=150)
    kpis = compute_kpis(crash, scenario="g", controller="c", seed=1, warmup_s=0, end_s=150,
                        occupancy={}, vtype_classes=VTYPE_CLASSES)
    listed = len(ET.parse(crash / "collisions.xml").getroot().findall("collision"))
    assert listed >= 1
    assert kpis.collisions == listed

    jam = run_sumo(net, tmp_path / "jam", end_s=300,
                   extra=("--time-to-teleport", "5"))
    kpis = compute_kpis(jam, scenario="g", controller="c", seed=1, warmup_s=0, end_s=300,
                        occupancy={}, vtype_classes=VTYPE_CLASSES)
    stats = ET.parse(jam / "statistics.xml").getroot().find("teleports")
    assert stats is not None
    assert kpis.teleports == int(stats.get("total", "-1")) > 0


def test_json_round_trip_and_summary(run: Path, tmp_path: Path) -> None:
    records = [
        compute_kpis(run, scenario="grid", controller=ctrl, seed=seed, warmup_s=WARMUP_S,
                     end_s=END_S, occupancy=OCCUPANCY, vtype_classes=VTYPE_CLASSES,
                     wall_time_s=1.5)
        for ctrl in ("fixed", "actuated") for seed in (1, 2)
    ]
    path = tmp_path / "kpis.json"
    write_kpis_json(records, path)
    back = read_kpis_json(path)
    assert back == records
    table = summary_table(records)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["scenario", "controller", "seeds"]
    fixed_row = next(line for line in lines if " fixed " in line)
    assert f"{records[0].vehicle_delay_s:.1f} ± 0.0" in fixed_row
    assert fixed_row.split()[-1] == "1.00"
    assert len(lines) == 4


def test_read_kpis_json_rejects_bad_records(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    path.write_text('[{"scenario": "x"}]', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"k\.json.*missing keys"):
        read_kpis_json(path)
    path.write_text("{", encoding="utf-8")
    with pytest.raises(ConfigError, match="invalid JSON"):
        read_kpis_json(path)


def test_tls_states_additional_rejects_bad_id(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="traffic light id"):
        tls_states_additional(tmp_path, 'a"b')
