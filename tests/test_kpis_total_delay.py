"""Total vehicle delay (timeLoss + insertion delay) in the KPI record, its JSON and the tables.

Synthetic records, no SUMO: the SUMO-based check of the sum is in test_kpis_sumo.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from _runner_helpers import bench_traffic

from controller.errors import ConfigError
from sim.kpis import (
    RunKpis,
    delay_ratio,
    read_kpis_json,
    summary_table,
    total_delay,
    write_kpis_json,
)


def _rec(controller: str, seed: int, delay: float | None, insertion: float | None) -> RunKpis:
    return RunKpis(
        scenario="peak", controller=controller, seed=seed, vehicle_delay_s=delay,
        car_delay_s=delay, truck_delay_s=None, bus_delay_s=None, bicycle_delay_s=None,
        pedestrian_delay_s=None, person_delay_s=delay, stops_per_vehicle=1.0,
        insertion_delay_s=insertion, queue_mean_m={}, queue_p95_m={}, queue_max_m=None,
        throughput_veh_h=900.0, vehicles_completed=10, persons_completed=0,
        trips_incomplete=0, insertion_backlog=0, teleports=0, person_teleports=0,
        collisions=0, emergency_stops=0, emergency_braking=0, co2_kg=1.0, nox_g=1.0,
        fuel_l=1.0, warmup_s=0.0, end_s=3600.0, run_dir="/nowhere",
    )


def test_total_is_vehicle_plus_insertion_delay_and_none_safe() -> None:
    assert _rec("fixed", 1, 40.0, 7.5).total_vehicle_delay_s == 47.5
    assert _rec("fixed", 1, 40.0, None).total_vehicle_delay_s == 40.0
    assert _rec("fixed", 1, None, 7.5).total_vehicle_delay_s is None
    assert total_delay(None, None) is None
    # Derived, so replace() keeps it consistent.
    assert replace(_rec("fixed", 1, 40.0, 7.5), insertion_delay_s=1.0).total_vehicle_delay_s == 41.0


def test_total_lands_in_json_and_old_files_still_load(tmp_path: Path) -> None:
    records = [_rec("fixed", 1, 40.0, 7.5), _rec("fixed", 2, None, None)]
    path = tmp_path / "kpis.json"
    write_kpis_json(records, path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert [d["total_vehicle_delay_s"] for d in data] == [47.5, None]
    assert read_kpis_json(path) == records
    # A file written before the field existed.
    for d in data:
        del d["total_vehicle_delay_s"]
    path.write_text(json.dumps(data), encoding="utf-8")
    assert [r.total_vehicle_delay_s for r in read_kpis_json(path)] == [47.5, None]
    # A stored total that disagrees with its parts is an error, not silently replaced.
    bad = asdict(records[0]) | {"total_vehicle_delay_s": 40.0}
    path.write_text(json.dumps([bad]), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"total_vehicle_delay_s=40\.0, its parts give 47\.5"):
        read_kpis_json(path)


def _bench_records() -> list[RunKpis]:
    # fixed: small timeLoss, little insertion delay; adaptive: less timeLoss, long waits outside.
    return [
        _rec("fixed", 1, 100.0, 10.0), _rec("fixed", 2, 120.0, 0.0),
        _rec("actuated", 1, 110.0, 20.0), _rec("actuated", 2, 100.0, None),
        _rec("adaptive", 1, 90.0, 42.0), _rec("adaptive", 2, 96.0, 60.0),
    ]


def test_bench_table_shows_total_delay_and_its_paired_ratios() -> None:
    traffic = bench_traffic()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        traffic.print_tables(_bench_records())
    text = buf.getvalue()
    first, second = text.split("delay incl. insertion")
    # The first table is unchanged: vehicle and person ratios only.
    assert "adaptive/fixed     vehicle 0.85" in first and "total" not in first
    assert "insertion s" in second and "total delay s" in second
    adaptive = next(line for line in second.splitlines() if line.strip().startswith("adaptive "))
    # Total 132 and 156: mean 144, CI half-width t(0.975, 1) * 12 sqrt(2) / sqrt(2).
    assert "144.00 ± 152.47" in adaptive
    # Mean of per-seed ratios, not ratio of means: (132/110 + 156/120) / 2 = 1.25.
    fixed_ratio = (132 / 110 + 156 / 120) / 2
    actuated_ratio = (132 / 130 + 156 / 100) / 2  # missing insertion delay counts as 0
    assert not math.isclose(fixed_ratio, 288 / 230, rel_tol=1e-3)
    ratio_lines = [line for line in second.splitlines() if "adaptive/" in line]
    assert ratio_lines[0].startswith(f"  adaptive/fixed     total {fixed_ratio:.2f} ± ")
    assert ratio_lines[1].startswith(f"  adaptive/actuated  total {actuated_ratio:.2f} ± ")


def test_bench_summary_json_has_total_delay() -> None:
    summary = bench_traffic().summarise(_bench_records())["peak"]
    assert isinstance(summary, dict)
    adaptive = summary["controllers"]["adaptive"]
    assert adaptive["total_vehicle_delay_s"]["mean"] == 144.0
    assert adaptive["insertion_delay_s"]["mean"] == 51.0
    ratio = summary["ratios"]["adaptive/fixed total_vehicle_delay_s"]["mean"]
    assert math.isclose(ratio, (132 / 110 + 156 / 120) / 2)
    # The existing keys are still there.
    assert "adaptive/fixed vehicle_delay_s" in summary["ratios"]


def test_summary_table_has_insertion_column() -> None:
    lines = summary_table(_bench_records()).splitlines()
    header = lines[0].split("  ")
    cells = [c.strip() for c in header if c.strip()]
    assert cells[3:5] == ["veh delay s", "insert. s"]
    fixed = next(line for line in lines if " fixed " in line)
    assert "5.0 ± 7.1" in fixed  # insertion 10 and 0
    assert fixed.split()[-1] == "1.00"


def test_delay_ratio_compares_only_the_seeds_both_controllers_ran() -> None:
    """A merged table may hold the baseline on seeds 1-4 and a controller on 1-2 only."""
    fixed = [_rec("fixed", s, d, None) for s, d in ((1, 100.0), (2, 100.0), (3, 300.0),
                                                    (4, 300.0))]
    adaptive = [_rec("adaptive", 1, 80.0, None), _rec("adaptive", 2, 90.0, None)]
    assert delay_ratio(adaptive, fixed) == pytest.approx(0.85)  # not 85 / 200
    assert delay_ratio([_rec("adaptive", 9, 80.0, None)], fixed) is None  # nothing shared
