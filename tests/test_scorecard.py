"""The target scorecard (sim.scorecard) and bench/traffic.py --from, on synthetic records."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest
from _runner_helpers import bench_traffic

from controller.errors import ConfigError
from sim.kpis import RunKpis, write_kpis_json
from sim.scorecard import DEFAULT_TARGETS, format_scorecard, merge_records, score


def _rec(
    scenario: str, controller: str, seed: int, vehicle: float, *,
    ped: float | None = 50.0, bus: float | None = 100.0, collisions: int = 0,
) -> RunKpis:
    return RunKpis(
        scenario=scenario, controller=controller, seed=seed, vehicle_delay_s=vehicle,
        car_delay_s=vehicle, truck_delay_s=None, bus_delay_s=bus, bicycle_delay_s=None,
        pedestrian_delay_s=ped, person_delay_s=vehicle, stops_per_vehicle=1.0,
        insertion_delay_s=None, queue_mean_m={}, queue_p95_m={}, queue_max_m=None,
        throughput_veh_h=900.0, vehicles_completed=10, persons_completed=0,
        trips_incomplete=0, insertion_backlog=0, teleports=0, person_teleports=0,
        collisions=collisions, emergency_stops=0, emergency_braking=0, co2_kg=1.0,
        nox_g=1.0, fuel_l=1.0, warmup_s=0.0, end_s=3600.0, run_dir="/nowhere",
    )


def _records() -> list[RunKpis]:
    return [
        # midday: adaptive 0.70 x fixed (met), pedestrians 1.1 x fixed (missed).
        _rec("midday", "fixed", 1, 100.0), _rec("midday", "fixed", 2, 120.0),
        _rec("midday", "actuated", 1, 90.0), _rec("midday", "actuated", 2, 110.0),
        _rec("midday", "adaptive", 1, 70.0, ped=55.0, collisions=1),
        _rec("midday", "adaptive", 2, 84.0, ped=55.0),
        # Seed 3 has no fixed run: it must not enter the ratio to fixed.
        _rec("midday", "adaptive", 3, 500.0),
        _rec("midday", "oracle", 1, 60.0), _rec("midday", "oracle", 2, 80.0),
        # night: adaptive loses to both baselines; no bus ran.
        _rec("night", "fixed", 1, 36.0, bus=None), _rec("night", "actuated", 1, 36.0, bus=None),
        _rec("night", "adaptive", 1, 37.0, bus=None),
    ]


def test_ratios_are_means_over_shared_seeds_and_verdicts_follow_the_limits() -> None:
    card = score(_records())
    midday = dict(zip((t.label for t in DEFAULT_TARGETS), card.scenarios["midday"], strict=True))
    v = midday["vehicle / fixed"]
    assert v.n == 2
    assert v.ratio == pytest.approx((70 + 84) / (100 + 120))
    assert v.met is True
    # Spread of the per-seed ratios 0.70 and 0.70: zero.
    assert v.ci95 == pytest.approx(0.0)
    assert midday["vehicle / actuated"].ratio == pytest.approx(154 / 200)
    assert midday["pedestrian / fixed"].ratio == pytest.approx(1.1)
    assert midday["pedestrian / fixed"].met is False
    night = dict(zip((t.label for t in DEFAULT_TARGETS), card.scenarios["night"], strict=True))
    assert night["vehicle / fixed"].met is False
    assert math.isnan(night["vehicle / fixed"].ci95 or 0.0)  # one seed: no spread
    # No bus in either: no ratio, neither met nor missed.
    assert night["bus / fixed"].ratio is None and night["bus / fixed"].met is None
    assert card.collisions == {"midday": 1, "night": 0}
    assert card.oracle is not None and card.oracle.ratio == pytest.approx(154 / 140)
    assert card.oracle.met is True
    assert card.overall[0].n == 3
    assert card.overall[0].ratio == pytest.approx((70 + 84 + 37) / (100 + 120 + 36))


def test_missed_targets_are_listed_and_printed() -> None:
    card = score(_records())
    missed = card.missed
    assert "midday: pedestrian / fixed 1.100 (limit 1.00)" in missed
    assert any(m.startswith("night: vehicle / fixed 1.028") for m in missed)
    assert any(m.startswith("night: vehicle / actuated") for m in missed)
    assert "all: 1 collisions (target 0)" in missed
    assert not any(m.startswith("midday: vehicle") for m in missed)
    text = format_scorecard(card)
    assert "0.700±0.00 met" in text
    assert "1.028 MISS" in text
    assert "4 of 7 scenario targets met" in text


def test_unknown_controller_and_duplicate_runs_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"no runs of controller 'adaptive-x'.*fixed"):
        score(_records(), "adaptive-x")
    recs = _records()
    with pytest.raises(ConfigError, match="midday/fixed/seed 1 appears twice"):
        merge_records(recs[:2], recs[:1])
    assert merge_records(recs[:2], recs[2:]) == recs




def test_bench_traffic_from_merges_scores_and_reports(tmp_path: Path) -> None:
    recs = _records()
    write_kpis_json(recs[:6], tmp_path / "a.json")
    write_kpis_json(recs[6:], tmp_path / "b.json")
    out = tmp_path / "out"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        rc = bench_traffic().main(["--from", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                              "--out", str(out)])
    assert rc == 0
    assert "targets of adaptive" in stdout.getvalue()
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    targets = summary["targets"]
    assert targets["scenarios"]["midday"]["vehicle / fixed"]["met"] is True
    assert targets["scenarios"]["night"]["vehicle / fixed"]["met"] is False
    assert targets["oracle"]["n"] == 2
    assert "midday: pedestrian / fixed 1.100 (limit 1.00)" in targets["missed"]
    page = (out / "report.html").read_text(encoding="utf-8")
    assert '<h2 id="targets">Targets</h2>' in page
    assert (out / "plots" / "targets.png").stat().st_size > 1000
    # The same file twice: refused with the run named, nothing written.
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = bench_traffic().main(["--from", str(tmp_path / "a.json"), str(tmp_path / "a.json"),
                              "--out", str(tmp_path / "dup")])
    assert rc == 2
    assert "appears twice" in err.getvalue()
    assert not (tmp_path / "dup").exists()
