"""Detector health: each fault is detected, hysteresis holds, staleness without messages."""

from __future__ import annotations

import pytest

from controller.health import Fault, HealthConfig, HealthEvent, HealthMonitor
from controller.messages import DetectorInfo, DetectorKind, DetectorReading

N = HealthConfig().recovery_readings


def loop(det_id: str, kind: DetectorKind = DetectorKind.STOP_LINE, approach: str = "N",
         lanes: int = 1) -> DetectorInfo:
    return DetectorInfo(det_id, kind, approach, tuple(f"{det_id}_{k}" for k in range(lanes)),
                        ("g1",), 2.0)


class Feed:
    """Sends 1 s readings to a monitor with per-detector sequence numbers."""

    def __init__(self, monitor: HealthMonitor) -> None:
        self.monitor = monitor
        self.seq: dict[str, int] = {}
        self.events: list[HealthEvent] = []

    def send(self, det: str, ts: float, count: int = 0, occupancy: float = 0.0, *,
             presence: bool = False, pressed: bool | None = None,
             queue_m: float | None = None, now: float | None = None) -> list[HealthEvent]:
        self.seq[det] = self.seq.get(det, 0) + 1
        reading = DetectorReading(det, ts, self.seq[det], count, occupancy, presence,
                                  None, queue_m, pressed)
        ev = self.monitor.observe(reading, ts if now is None else now)
        ev += self.monitor.tick(ts if now is None else now)
        self.events += ev
        return ev

    def normal(self, det: str, t0: float, seconds: int) -> float:
        """Plausible traffic: one vehicle every 3 s."""
        for k in range(seconds):
            c = 1 if k % 3 == 0 else 0
            self.send(det, t0 + k, c, 0.3 * c)
        return t0 + seconds


def healthy_monitor(*infos: DetectorInfo, config: HealthConfig | None = None) -> Feed:
    feed = Feed(HealthMonitor(infos, config))
    t = 0.0
    for info in infos:
        feed.normal(info.id, t, N + 2)
    for info in infos:
        assert feed.monitor.status(info.id) is None
    feed.events.clear()
    return feed


def test_health_starts_stale_and_needs_n_plausible_readings() -> None:
    feed = Feed(HealthMonitor([loop("d")]))
    assert feed.monitor.status("d") is Fault.STALE
    for k in range(N - 1):
        feed.send("d", float(k))
    assert feed.monitor.status("d") is Fault.STALE
    ev = feed.send("d", float(N - 1))
    assert feed.monitor.status("d") is None
    assert ev == [HealthEvent("d", float(N - 1), Fault.STALE, None, ev[0].detail)]
    assert feed.monitor.faulty() == {}


def test_health_stale_by_tick_without_messages() -> None:
    feed = healthy_monitor(loop("d"))
    last = N + 1.0
    assert feed.monitor.tick(last + 2.0) == []  # exactly 2 x period: not yet stale
    ev = feed.monitor.tick(last + 2.1)
    assert [(e.old, e.new) for e in ev] == [(None, Fault.STALE)]
    assert feed.monitor.faulty() == {"d": Fault.STALE}
    assert feed.monitor.tick(last + 10.0) == []  # reported once, not every tick


def test_health_stale_by_old_source_timestamp() -> None:
    feed = healthy_monitor(loop("d"))
    ev = feed.send("d", 20.0, now=25.0)
    assert [e.new for e in ev] == [Fault.STALE]


def test_health_stuck_on_after_limit_not_before_and_hysteresis() -> None:
    feed = healthy_monitor(loop("d"))
    t = 20.0
    for k in range(110):  # a long red with a vehicle standing on the loop
        feed.send("d", t + k, 0, 1.0, presence=True)
    assert feed.monitor.status("d") is None
    t = feed.normal("d", t + 110, 5)
    for k in range(125):
        feed.send("d", t + k, 0, 1.0, presence=True)
    assert feed.monitor.status("d") is Fault.STUCK_ON
    t += 125
    # One plausible reading does not clear it ...
    feed.send("d", t, 0, 0.2)
    feed.send("d", t + 1, 0, 1.0, presence=True)
    feed.normal("d", t + 2, N - 1)
    assert feed.monitor.status("d") is Fault.STUCK_ON
    # ... N consecutive ones do.
    feed.normal("d", t + 2 + N - 1, 1)
    assert feed.monitor.status("d") is None
    assert [(e.old, e.new) for e in feed.events] == [(None, Fault.STUCK_ON), (Fault.STUCK_ON, None)]


def test_health_stuck_push_button() -> None:
    info = DetectorInfo("pb", DetectorKind.PUSH_BUTTON, "N", (), ("p1",))
    feed = Feed(HealthMonitor([info]))
    for k in range(N):
        feed.send("pb", float(k), pressed=False)
    assert feed.monitor.status("pb") is None
    for k in range(N, N + 130):
        feed.send("pb", float(k), pressed=True)
    assert feed.monitor.status("pb") is Fault.STUCK_ON


def test_health_chattering_sustained_counts_beyond_physical_flow() -> None:
    feed = healthy_monitor(loop("d"))
    t = 20.0
    feed.send("d", t, 3, 0.9)  # a single burst (a long truck counted thrice) is no fault
    t = feed.normal("d", t + 1, 30)
    assert feed.monitor.status("d") is None
    for k in range(60):
        feed.send("d", t + k, 2, 0.6)
    assert feed.monitor.status("d") is Fault.CHATTERING
    t += 60
    # Two counts every second look fine one by one but stay beyond physical flow.
    for k in range(3 * N):
        feed.send("d", t + k, 2, 0.6)
    assert feed.monitor.status("d") is Fault.CHATTERING
    feed.normal("d", t + 3 * N, N)
    assert feed.monitor.status("d") is None


def test_health_chattering_threshold_scales_with_lanes() -> None:
    feed = healthy_monitor(loop("d", lanes=2))
    for k in range(90):  # 1.5 veh/s over two lanes is heavy but physical
        feed.send("d", 20.0 + k, 2 if k % 2 else 1, 0.5)
    assert feed.monitor.status("d") is None


def test_health_impossible_count_occupancy_combination() -> None:
    feed = healthy_monitor(loop("d"))
    t = 20.0
    for k in range(2):
        feed.send("d", t + 3 * k, 4, 0.0)
        feed.normal("d", t + 3 * k + 1, 2)
    assert feed.monitor.status("d") is None
    feed.send("d", t + 6, 4, 0.0)
    assert feed.monitor.status("d") is Fault.CHATTERING


def test_health_dead_when_neighbours_count_and_not_when_all_are_quiet() -> None:
    cfg = HealthConfig(dead_after_s=300.0)
    feed = healthy_monitor(loop("a"), loop("b"), loop("c", approach="S"), config=cfg)
    t = 20.0
    # Night: everything quiet on approach N: nobody is dead.
    for k in range(400):
        feed.send("a", t + k)
        feed.send("b", t + k)
        feed.send("c", t + k)
    assert feed.monitor.faulty() == {}
    t += 400
    # Day: b counts, a stays silent.
    for k in range(400):
        feed.send("a", t + k)
        feed.send("b", t + k, 1 if k % 4 == 0 else 0, 0.2 if k % 4 == 0 else 0.0)
        feed.send("c", t + k)
    assert feed.monitor.status("a") is Fault.DEAD
    assert feed.monitor.status("b") is None
    assert feed.monitor.status("c") is None  # its own approach is quiet
    t += 400
    # Silence after the fault is no evidence of life; activity then N plausible readings is.
    for k in range(2 * N):
        feed.send("a", t + k)
        feed.send("b", t + k)
        feed.send("c", t + k)
    assert feed.monitor.status("a") is Fault.DEAD
    feed.normal("a", t + 2 * N, N)
    assert feed.monitor.status("a") is None


def test_health_ignores_duplicates_and_unknown_detectors() -> None:
    mon = HealthMonitor([loop("d")])
    r = DetectorReading("d", 1.0, 1)
    assert mon.observe(r, 1.0) == []
    for _ in range(2 * N):
        mon.observe(r, 1.0)  # redelivered (QoS 1): must not count towards recovery
    assert mon.status("d") is Fault.STALE
    assert mon.observe(DetectorReading("x", 1.0, 1), 1.0) == []
    with pytest.raises(KeyError):
        mon.status("x")


def test_health_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="stale_factor"):
        HealthConfig(stale_factor=0.5)
    with pytest.raises(ValueError, match="recovery"):
        HealthConfig(recovery_readings=0)


def _hour(feed: Feed, t: float, seconds: int, rates: dict[str, int]) -> float:
    """Each detector counts one vehicle every ``rates[det]`` seconds (0: silent)."""
    for k in range(seconds):
        for det, every in rates.items():
            c = 1 if every and k % every == every - 1 else 0
            feed.send(det, t + k, c, 0.3 * c)
    return t + seconds


def test_health_a_rarely_used_pocket_loop_is_not_dead_for_a_quiet_spell() -> None:
    # Night on approach N: two through loops count 60 veh/h each, the left-turn pocket's
    # loop 6 veh/h. Ten, even twenty minutes without a left turner happen by chance
    # (Poisson 6/h: one time in seven for twenty minutes); the neighbours meanwhile count
    # 40. Before the share rule this pocket loop was DEAD after 600 s.
    feed = healthy_monitor(loop("thru1"), loop("thru2"), loop("left"))
    t = _hour(feed, 20.0, 3600, {"thru1": 60, "thru2": 60, "left": 600})
    t = _hour(feed, t, 1200, {"thru1": 60, "thru2": 60, "left": 0})
    assert feed.monitor.status("left") is None
    # A detector that usually sees a third of the traffic is dead after the same silence.
    busy = healthy_monitor(loop("thru1"), loop("thru2"), loop("left"))
    t = _hour(busy, 20.0, 3600, {"thru1": 60, "thru2": 60, "left": 60})
    t = _hour(busy, t, 700, {"thru1": 60, "thru2": 60, "left": 0})
    assert busy.monitor.status("left") is Fault.DEAD


def test_health_a_loop_dead_from_the_start_is_still_found() -> None:
    # It never counted: its share is the prior's alone, which still expects activity.
    feed = Feed(HealthMonitor([loop("a"), loop("b"), loop("c")]))
    _hour(feed, 0.0, 1800, {"a": 10, "b": 10, "c": 0})
    assert feed.monitor.status("c") is Fault.DEAD
    assert feed.monitor.status("a") is None and feed.monitor.status("b") is None


def test_health_a_detector_that_restarted_its_counter_stays_healthy() -> None:
    """The ingest gate admits a restart (seq from 1 again, newer ts); health must not drop it."""
    feed = healthy_monitor(loop("d"))
    t = feed.normal("d", float(N + 2), 600)
    feed.seq["d"] = 0  # the detector restarted: its counter begins again
    feed.normal("d", t, 60)
    assert feed.monitor.status("d") is None
    assert feed.events == []
