"""The SUMO twin on the real Schlosskreuzung net: plan ranking, determinism, worker lifecycle."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace

import pytest

from controller.messages import DetectorReading
from controller.plans import SignalProgram, StagePlan, compile_plan
from controller.twin import SnapshotBuilder, SumoTwin, TwinScore, TwinSnapshot
from sim.junction import JunctionModel, load_junction
from sim.twin_config import twin_config_from_model

pytestmark = pytest.mark.sumo

MODEL: JunctionModel = load_junction("schlosskreuzung")
CFG = twin_config_from_model(MODEL, horizon_s=300)
SEQ = ("P1", "P2", "P3", "P4")


def program(greens: tuple[int, ...], pid: str) -> SignalProgram:
    return compile_plan(MODEL.signals, StagePlan(SEQ, greens), pid)


RUNNING = program((25, 10, 25, 10), "running")
#: North and south through traffic (stage P1) queue long; the other arms are light.
SERVES_QUEUE = program((50, 10, 12, 8), "serves-queue")
STARVES_QUEUE = program((10, 10, 50, 10), "starves-queue")


def queued_snapshot() -> TwinSnapshot:
    b = SnapshotBuilder(CFG)
    seq: dict[str, int] = {}

    def feed(did: str, ts: float, **kw: object) -> None:
        seq[did] = seq.get(did, -1) + 1
        b.observe(DetectorReading(did, ts, seq[did], **kw))  # type: ignore[arg-type]

    for t in range(0, 120):
        for did in ("N1_up", "N2_up", "S1_up", "S2_up"):
            feed(did, float(t), count=1 if t % 5 == 0 else 0)     # 720 veh/h per lane
        for did in ("W1_up", "E1_up"):
            feed(did, float(t), count=1 if t % 30 == 0 else 0)    # 120 veh/h
    for did in ("N1_q", "N2_q", "S1_q", "S2_q"):
        feed(did, 119.0, queue_m=90.0)
    for did in ("W1_q", "E1_q", "N3_q", "S3_q", "W2_q", "E2_q"):
        feed(did, 119.0, queue_m=5.0)
    return b.snapshot(120.0, None, RUNNING, RUNNING.cycle_s - 1)


@pytest.fixture(scope="module")
def twin() -> Iterator[SumoTwin]:
    with SumoTwin(CFG, workers=2) as t:
        yield t


def _same(a: TwinScore, b: TwinScore) -> bool:
    return replace(a, wall_s=0.0) == replace(b, wall_s=0.0)


def test_serving_the_queue_scores_lower_person_delay(twin: SumoTwin) -> None:
    snap = queued_snapshot()
    assert len([v for v in snap.vehicles if not v.moving]) > 40
    good, bad, run = twin.evaluate(snap, [SERVES_QUEUE, STARVES_QUEUE, RUNNING])
    assert (good.program_id, bad.program_id, run.program_id) == (
        "serves-queue", "starves-queue", "running"
    )
    assert good.vehicles == bad.vehicles == run.vehicles > 100
    assert good.person_delay_s < run.person_delay_s < bad.person_delay_s
    assert good.vehicle_delay_s < bad.vehicle_delay_s
    assert good.pedestrian_delay_s > 0 and bad.pedestrian_delay_s > 0
    assert all(s.sim_s == 300.0 and s.wall_s > 0 for s in (good, bad, run))


def test_same_snapshot_and_programs_give_the_same_scores(twin: SumoTwin) -> None:
    snap = queued_snapshot()
    programs = [RUNNING, SERVES_QUEUE, STARVES_QUEUE, program((30, 10, 30, 10), "even")]
    first = twin.evaluate(snap, programs)
    # Reversed order lands programs on other workers; common random numbers keep the scores.
    second = list(reversed(twin.evaluate(snap, list(reversed(programs)))))
    assert [s.program_id for s in first] == [p.id for p in programs]
    assert all(_same(a, b) for a, b in zip(first, second, strict=True))
    # A rebuilt snapshot (equal but a new object) gives the same scores as well.
    third = twin.evaluate(queued_snapshot(), programs)
    assert all(_same(a, b) for a, b in zip(first, third, strict=True))


def test_bus_passengers_weigh_in_person_delay(twin: SumoTwin) -> None:
    snap = queued_snapshot()
    b = SnapshotBuilder(CFG)
    b.observe(DetectorReading("E_bus", 119.0, 0, count=1))
    bus = b.snapshot(120.0, None, RUNNING, RUNNING.cycle_s - 1).vehicles
    with_bus = replace(snap, vehicles=snap.vehicles + bus)
    # The east arm is served in P3: starving P3 delays the bus.
    good, bad = twin.evaluate(with_bus, [SERVES_QUEUE, STARVES_QUEUE])
    assert good.bus_delay_s > bad.bus_delay_s
    assert good.bus_delay_s > 0


def test_close_stops_the_workers() -> None:
    t = SumoTwin(CFG, workers=2)
    t.warm_up()
    pids = t.worker_pids()
    assert len(pids) == 2
    for pid in pids:
        os.kill(pid, 0)  # alive
    t.close()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(RuntimeError, match="closed"):
        t.evaluate(queued_snapshot(), [RUNNING])
