"""Reading the twin's accumulated delay free of where the horizon ends in a cycle.

``phase_read`` and ``pedestrian_accrued`` are pure; the twin uses them when
``TwinConfig.phase_average`` is on (docs/twin.md, "Phase at the horizon's end").
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import pytest
from _twin_helpers import module_worker

from controller.plans import StagePlan, compile_plan
from controller.twin import (
    SnapshotBuilder,
    TwinConfig,
    TwinScore,
    TwinSnapshot,
    _Worker,
    pedestrian_accrued,
    pedestrian_delay,
    phase_read,
)
from sim.junction import JunctionModel, load_junction
from sim.twin_config import twin_config_from_model

MODEL: JunctionModel = load_junction("schlosskreuzung")
CFG: TwinConfig = twin_config_from_model(MODEL, horizon_s=300)
SEQ = ("P1", "P2", "P3", "P4")
RUNNING = compile_plan(MODEL.signals, StagePlan(SEQ, (25, 10, 20, 8)), "running")
LONG_MAIN = compile_plan(MODEL.signals, StagePlan(SEQ, (40, 8, 12, 8)), "long-main")


def _queue_wave(t: np.ndarray, cycle_s: int) -> np.ndarray:
    """Extra delay of a queue that builds over red and clears over green, mean zero."""
    phase = np.mod(t, cycle_s) / cycle_s
    saw = np.where(phase < 0.6, phase / 0.6, (1.0 - phase) / 0.4)
    return 40.0 * (saw - 0.5)


@pytest.mark.parametrize("cycle_s", [74, 97, 120])
def test_the_read_follows_the_trend_wherever_the_end_falls_in_the_cycle(cycle_s: int) -> None:
    a, r = 500.0, 12.0
    reads, cut_offs = [], []
    for end in range(300, 300 + cycle_s, 7):
        # Samples every 5 s counted back from the end, as the twin takes them.
        ts = np.arange(end - 5 * math.ceil((cycle_s + 5) / 5), end + 1, 5, dtype=float)
        values = a + r * ts + _queue_wave(ts, cycle_s)
        reads.append(phase_read(ts, values, cycle_s) - (a + r * end))
        cut_offs.append(values[-1] - (a + r * end))
    # The cut-off swings with the wave (+-20 s); the read stays on the trend.
    assert max(cut_offs) - min(cut_offs) > 30.0
    assert max(abs(x) for x in reads) < 1.5


def test_a_plain_trend_is_read_at_the_end() -> None:
    ts = np.arange(150.0, 301.0, 5.0)
    assert phase_read(ts, 3.0 * ts + 10.0, 97) == pytest.approx(910.0)


def test_samples_shorter_than_a_cycle_fall_back_to_the_last_value() -> None:
    ts = np.arange(250.0, 301.0, 5.0)
    values = ts * ts
    assert phase_read(ts, values, 97) == values[-1]


def test_pedestrian_accrual_ends_at_the_horizons_total_and_never_falls() -> None:
    snap = SnapshotBuilder(CFG).snapshot(0.0, None, RUNNING, 17)
    program = compile_plan(MODEL.signals, StagePlan(SEQ, (40, 10, 12, 8)), "candidate")
    total, _ = pedestrian_delay(MODEL.signals, snap, program, 300)
    ts, accrued = pedestrian_accrued(MODEL.signals, snap, program, 300, program.cycle_s)
    assert ts[0] == 300 - program.cycle_s and ts[-1] == 300
    assert accrued[-1] == pytest.approx(total)
    steps = np.diff(accrued)
    assert (steps >= 0).all()
    # Pedestrians keep arriving, so someone waits at a red crossing in every second.
    assert (steps > 0).all()
    # The read is not the cut-off: the horizon's end is not at a cycle boundary.
    assert phase_read(ts, accrued, program.cycle_s) != pytest.approx(total)


def test_a_negative_draw_count_is_refused() -> None:
    with pytest.raises(ValueError, match="phase_average_min_draws"):
        replace(CFG, phase_average_min_draws=-1)


# -- in the twin ----------------------------------------------------------------------------


worker = module_worker(CFG, "twin-phase")


def _flows(veh_h: float) -> TwinSnapshot:
    flows = dict.fromkeys(CFG.vehicle_groups, veh_h / len(CFG.vehicle_groups))
    return TwinSnapshot(0.0, RUNNING, 0, (), flows, {}, {}, {})


@contextmanager
def _configured(w: _Worker, **changes: int) -> Iterator[None]:
    w.config = replace(CFG, **changes)
    try:
        yield
    finally:
        w.config = CFG


def _score(w: _Worker, snap: TwinSnapshot, min_draws: int) -> TwinScore:
    with _configured(w, phase_average_min_draws=min_draws):
        return replace(w.score(snap, LONG_MAIN), wall_s=0.0)


@pytest.mark.sumo
def test_the_phase_free_read_applies_where_the_twin_pools_draws(worker: _Worker) -> None:
    night = _flows(240.0)
    cut_off, read = _score(worker, night, 0), _score(worker, night, 2)
    assert read.draws == 4
    assert read.person_delay_s != pytest.approx(cut_off.person_delay_s, abs=1e-3)
    # Only the ranking score changes; the delays reported per mode stay the cut-off's.
    assert replace(read, person_delay_s=0.0) == replace(cut_off, person_delay_s=0.0)


@pytest.mark.sumo
def test_peak_scores_keep_the_cut_off_unless_asked_for_always(worker: _Worker) -> None:
    peak = _flows(2400.0)
    cut_off, default = _score(worker, peak, 0), _score(worker, peak, CFG.phase_average_min_draws)
    assert default.draws == 1
    assert default == cut_off
    always = _score(worker, peak, 1)
    assert always.person_delay_s != pytest.approx(cut_off.person_delay_s, abs=1e-3)
