"""SnapshotBuilder and the twin's pure parts: detector stream in, snapshot out (no SUMO run)."""

from __future__ import annotations

import pickle
from dataclasses import fields, is_dataclass
from itertools import pairwise
from typing import Any

import pytest

from controller.messages import DetectorReading, HardwareState
from controller.plans import SignalProgram, StagePlan, compile_plan, group_states
from controller.signals import JunctionSignals
from controller.twin import (
    BUS,
    CAR,
    SnapshotBuilder,
    TwinConfig,
    TwinSnapshot,
    _init_worker,
    _score_task,
    link_state_table,
    pedestrian_delay,
    timeline,
)
from sim.junction import JunctionModel, load_junction
from sim.tlsprogram import LinkStates
from sim.twin_config import twin_config_from_model

MODEL: JunctionModel = load_junction("schlosskreuzung")
CFG: TwinConfig = twin_config_from_model(MODEL)
SEQ = ("P1", "P2", "P3", "P4")


def program(greens: tuple[int, ...], pid: str = "p") -> SignalProgram:
    return compile_plan(MODEL.signals, StagePlan(SEQ, greens), pid)


RUNNING = program((25, 10, 20, 8), "running")


class Stream:
    """Feeds readings with increasing sequence numbers per detector."""

    def __init__(self, builder: SnapshotBuilder) -> None:
        self.builder = builder
        self.seq: dict[str, int] = {}

    def __call__(self, did: str, ts: float, **kw: Any) -> None:
        self.seq[did] = self.seq.get(did, -1) + 1
        self.builder.observe(DetectorReading(did, ts, self.seq[did], **kw))


def state(ts: float, green: set[str], signals: JunctionSignals = MODEL.signals) -> HardwareState:
    chars = "".join("G" if g in green else "r" for g in signals.group_ids)
    return HardwareState(ts=ts, program_id="running", fallback=False, cycle_second=0,
                         signal_states=chars)


def test_config_routes_cover_every_vehicle_group_and_shares_sum_to_one() -> None:
    groups = {g.id for g in MODEL.signals.groups if g.id.startswith("K")}
    assert {r.group for r in CFG.routes} == groups
    for g in groups:
        assert sum(r.share for r in CFG.routes if r.group == g) == pytest.approx(1.0)
    # A right-turn lane pair: N_app_3 carries only through traffic, N_app_2 through and right.
    assert CFG.lane_routes["N_app_3"] == ("NS",)
    assert set(CFG.lane_routes["N_app_2"]) == {"NS", "NW"}
    assert CFG.upstream["N1_up"].lane == "N_in_2"
    assert CFG.upstream["N1_up"].distance_m == pytest.approx(100.0)


def test_queue_readings_become_standing_vehicles_per_lane() -> None:
    b = SnapshotBuilder(CFG)
    feed = Stream(b)
    feed("N1_q", 99.0, queue_m=40.0)    # 6 cars: 6 * 7.5 - 2.5
    feed("N3_q", 99.0, queue_m=12.5)    # 2 cars in the left-turn pocket
    feed("N2_q", 99.0, queue_m=100.0)   # 14 cars: spills from N_app_3 back onto N_in_3
    snap = b.snapshot(100.0, None, RUNNING, 0)
    standing = [v for v in snap.vehicles if not v.moving]
    by_lane: dict[str, list[float]] = {}
    for v in standing:
        by_lane.setdefault(v.lane, []).append(v.pos_m)
    assert len(by_lane["N_app_2"]) == 6
    assert len(by_lane["N_app_4"]) == 2
    assert len(by_lane["N_app_3"]) + len(by_lane["N_in_3"]) == 14
    assert len(by_lane["N_in_3"]) >= 6
    # The first car stands at the stop line, the others one jam spacing apart.
    app2 = sorted(by_lane["N_app_2"], reverse=True)
    assert app2[0] == pytest.approx(CFG.lanes["N_app_2"].length_m - 0.5)
    assert [a - b for a, b in pairwise(app2)] == pytest.approx([7.5] * 5)
    assert all(v.kind == CAR and v.groups == ("K1",) for v in standing if v.lane == "N_app_2")
    assert {v.lane for v in snap.vehicles} <= set(CFG.lanes)


def test_stale_queue_reading_is_not_used() -> None:
    b = SnapshotBuilder(CFG)
    Stream(b)("N1_q", 50.0, queue_m=40.0)
    snap = b.snapshot(100.0, None, RUNNING, 0)
    assert not [v for v in snap.vehicles if v.lane in ("N_app_2", "N_in_2")]


def test_upstream_counts_become_vehicles_in_transit() -> None:
    b = SnapshotBuilder(CFG)
    feed = Stream(b)
    for t in range(80, 101):
        count = 1 if t in (97, 99) else (2 if t == 80 else 0)
        feed("N1_up", float(t), count=count, speed_mps=10.0 if count else None)
    snap = b.snapshot(100.0, None, RUNNING, 0)
    moving = sorted(v.pos_m for v in snap.vehicles if v.moving and v.lane == "N_in_2")
    loop = CFG.upstream["N1_up"]
    # Passed 1 s and 3 s ago at 10 m/s; the two from 20 s ago have reached the stop line.
    assert moving == pytest.approx([loop.pos_m + 10.0, loop.pos_m + 30.0])
    assert all(v.groups == loop.groups for v in snap.vehicles if v.moving)


def test_vehicles_in_transit_that_reached_the_queue_are_not_counted_twice() -> None:
    b = SnapshotBuilder(CFG)
    feed = Stream(b)
    feed("N1_up", 95.0, count=1, speed_mps=13.89)
    feed("N1_q", 100.0, queue_m=40.0)   # 69 m from the loop leaves 31 m < 40 m + one car
    snap = b.snapshot(100.0, None, RUNNING, 0)
    assert not [v for v in snap.vehicles if v.moving]
    assert len([v for v in snap.vehicles if v.lane == "N_app_2"]) == 6


def test_flows_from_estimate_and_turning_shares_per_approach() -> None:
    b = SnapshotBuilder(CFG)
    snap = b.snapshot(0.0, None, RUNNING, 0)
    assert set(snap.flows_veh_h) == set(CFG.vehicle_groups)
    assert all(q == CFG.default_flow_veh_h for q in snap.flows_veh_h.values())
    for a in CFG.approaches:
        total = sum(snap.route_shares[r.id] for r in CFG.routes if r.approach == a.id)
        assert total == pytest.approx(1.0)


def test_measured_upstream_flow_is_used_without_an_estimate() -> None:
    b = SnapshotBuilder(CFG)
    feed = Stream(b)
    for t in range(0, 1800):
        feed("W1_up", float(t), count=1 if t % 6 == 0 else 0)   # 600 veh/h
    snap = b.snapshot(1800.0, None, RUNNING, 0)
    # W1_up serves K5 and K6, so its smoothed rate (six time constants in: settled within
    # 1 %) is split between the two groups.
    both = snap.flows_veh_h["K5"] + snap.flows_veh_h["K6"]
    assert 500.0 < both < 620.0
    # West's left turn gets half of the loop's flow, so its share of the west arm is half.
    assert snap.route_shares["WN"] == pytest.approx(0.5)


def test_pedestrian_request_pending_until_green() -> None:
    b = SnapshotBuilder(CFG)
    feed = Stream(b)
    feed("N_pb", 10.0, pressed=True, presence=True, count=1)
    feed("N_pb", 11.0, pressed=True, presence=True, count=1)
    assert b.snapshot(30.0, None, RUNNING, 0).pedestrian_waiting_s == {"F1": 20.0}
    b.observe_state(state(31.0, {"F1", "K5", "K7"}))
    assert b.snapshot(32.0, None, RUNNING, 0).pedestrian_waiting_s == {}


def test_bus_request_becomes_a_bus_until_served() -> None:
    b = SnapshotBuilder(CFG)
    Stream(b)("N_bus", 100.0, count=1)
    snap = b.snapshot(102.0, None, RUNNING, 0)
    buses = [v for v in snap.vehicles if v.kind == BUS]
    assert len(buses) == 1
    loop = CFG.bus_requests["N_bus"]
    assert buses[0].lane == loop.lane
    assert buses[0].pos_m == pytest.approx(loop.pos_m + 2 * CFG.bus_speed_mps)
    eta = 100.0 + loop.distance_m / CFG.bus_speed_mps
    for k in range(10):
        b.observe_state(state(eta + k, {"K1", "K3"}))
    assert not [v for v in b.snapshot(eta + 10, None, RUNNING, 0).vehicles if v.kind == BUS]


def test_timeline_finishes_the_running_cycle_then_runs_the_candidate() -> None:
    snap = SnapshotBuilder(CFG).snapshot(0.0, None, RUNNING, RUNNING.cycle_s - 3)
    cand = program((40, 10, 20, 8), "cand")
    seq = timeline(snap, cand, 10)
    assert seq[:2] == [RUNNING.cycle_s - 2, RUNNING.cycle_s - 1]
    assert seq[2:] == [-1 - k for k in range(8)]


def test_link_state_table_matches_the_field_encoding() -> None:
    encoder = LinkStates(MODEL.signals)
    prog = program((30, 10, 20, 8))
    per_group = group_states(MODEL.signals, prog)
    table = link_state_table(MODEL.signals, prog)
    assert len(table) == prog.cycle_s
    for sec, text in enumerate(table):
        assert text == encoder.encode({g: s[sec] for g, s in per_group.items()})
    assert any("g" in text for text in table)


def test_pedestrian_delay_follows_green_windows() -> None:
    snap = SnapshotBuilder(CFG).snapshot(0.0, None, RUNNING, RUNNING.cycle_s - 1)
    short_f1 = program((40, 10, 10, 8))    # F1 (stage P3) green rarely
    long_f1 = program((10, 10, 40, 8))
    d_short, n_short = pedestrian_delay(MODEL.signals, snap, short_f1, 300)
    d_long, n_long = pedestrian_delay(MODEL.signals, snap, long_f1, 300)
    assert n_short == n_long == pytest.approx(4 * 60.0 / 12)
    assert d_long > 0
    assert d_short != d_long


def _plain(obj: object, seen: set[int] | None = None) -> list[str]:
    """Types reachable from ``obj`` that are not plain data of the controller."""
    seen = seen if seen is not None else set()
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if obj is None or isinstance(obj, str | int | float | bool):
        return []
    if isinstance(obj, tuple | list | frozenset | set):
        return [t for x in obj for t in _plain(x, seen)]
    if isinstance(obj, dict):
        return [t for k, v in obj.items() for t in _plain(k, seen) + _plain(v, seen)]
    if is_dataclass(obj) and type(obj).__module__.startswith("controller."):
        return [t for f in fields(obj) for t in _plain(getattr(obj, f.name), seen)]
    return [f"{type(obj).__module__}.{type(obj).__name__}"]


def test_snapshot_and_config_are_plain_picklable_controller_data() -> None:
    b = SnapshotBuilder(CFG)
    feed = Stream(b)
    feed("N1_q", 1.0, queue_m=20.0)
    feed("S1_up", 1.0, count=1)
    feed("E_bus", 1.0, count=1)
    snap = b.snapshot(2.0, None, RUNNING, 3)
    assert _plain(snap) == []
    assert _plain(CFG) == []
    assert pickle.loads(pickle.dumps(snap)) == snap
    assert pickle.loads(pickle.dumps(CFG)) == CFG


def test_worker_entries_refuse_anything_but_twin_types() -> None:
    snap = SnapshotBuilder(CFG).snapshot(0.0, None, RUNNING, 0)
    with pytest.raises(TypeError, match="only TwinSnapshot and SignalProgram"):
        _score_task(snap, {"id": "p"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="only TwinSnapshot and SignalProgram"):
        _score_task(MODEL, RUNNING)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="TwinConfig"):
        _init_worker(MODEL, "/tmp")  # type: ignore[arg-type]
    assert isinstance(snap, TwinSnapshot)
