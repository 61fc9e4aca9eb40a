"""The HIL field's hardware rules without a broker or SUMO: a fake link and fake clocks.

The same rules run against a real mosquitto in test_fieldmqtt_hil.py; here every
simulated second is stepped by hand, so timing claims are exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest

from controller.errors import ConfigError
from controller.messages import AckStatus, PlanAck, PlanCommand
from controller.plans import SignalProgram, StagePlan, compile_plan
from controller.webster import stage_min_greens
from controller.wire import (
    ServiceState,
    ServiceStatus,
    TopicKind,
    decode_ack,
    encode_plan,
    encode_status,
    topic_for,
)
from sim.drivers import DriverContext
from sim.field_mqtt import (
    BrokerConfig,
    FieldSettings,
    HilDriver,
    Incoming,
    LinkStats,
    Outgoing,
    _salvage_ids,
    parse_broker,
)
from sim.junction import JunctionModel, load_junction

J = "schlosskreuzung"
T0 = 1_767_225_600.0


class FakeLink:
    def __init__(self) -> None:
        self.stats = LinkStats()
        self.inbox: list[Incoming] = []
        self.sent: list[Outgoing] = []

    def start(self) -> None:
        pass

    def send(self, messages: Sequence[Outgoing]) -> None:
        self.sent.extend(messages)

    def receive(self) -> list[Incoming]:
        out, self.inbox = self.inbox, []
        return out

    def stop(self, timeout: float = 5.0) -> None:
        pass


class Clock:
    """Wall and monotonic time that advance only when the driver sleeps."""

    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def mono(self) -> float:
        return self.t

    def wall(self) -> float:
        return T0 + self.t

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s


@pytest.fixture(scope="module")
def model() -> JunctionModel:
    return load_junction(J)


def program(model: JunctionModel, pid: str, extra: int = 0) -> SignalProgram:
    seq = tuple(s.id for s in model.signals.stages)
    greens = list(stage_min_greens(model.signals, seq))
    greens[0] += extra
    return compile_plan(model.signals, StagePlan(seq, tuple(greens)), pid)


class Rig:
    def __init__(self, model: JunctionModel, speed: float) -> None:
        self.fallback = program(model, "fallback-test")
        self.link = FakeLink()
        self.clock = Clock()
        ctx = DriverContext(model=model, fixed_program=self.fallback,
                            sequence=tuple(s.id for s in model.signals.stages), run_dir="",
                            seed=1)
        self.driver = HilDriver(
            ctx, FieldSettings(BrokerConfig("127.0.0.1", 1), J, speed), link=self.link,
            clock=self.clock.mono, wall=self.clock.wall, sleep=self.clock.sleep)
        self.t = 0.0

    def run(self, seconds: int) -> None:
        for _ in range(seconds):
            self.t += 1
            self.driver.step(self.t, [])

    def push(self, payload: bytes, kind: TopicKind = TopicKind.PLAN) -> None:
        self.link.inbox.append(Incoming(topic_for(J, kind), payload, self.clock.wall()))

    def plan(self, prog: SignalProgram, seq: int, lease_s: float, *, age_s: float = 0) -> None:
        now = self.clock.wall() - age_s
        self.push(encode_plan(PlanCommand(prog, now, now, lease_s, seq)))

    def status(self, state: ServiceState) -> None:
        self.push(encode_status(ServiceStatus(state, "t", self.clock.wall())),
                  TopicKind.SERVICE_STATUS)

    def acks(self) -> list[PlanAck]:
        out = []
        for m in self.link.sent:
            if m.kind == "ack":
                ack = decode_ack(m.payload)
                assert isinstance(ack, PlanAck)
                out.append(ack)
        return out

    def running(self) -> str:
        return self.driver.hardware.running.id

    def until_running(self, pid: str, limit: int) -> int:
        for n in range(limit):
            if self.running() == pid:
                return n
            self.run(1)
        pytest.fail(f"{pid} not running after {limit} s (runs {self.running()})")


def test_parse_broker() -> None:
    assert parse_broker("mqtt.example:8883") == ("mqtt.example", 8883)
    assert parse_broker("localhost") == ("localhost", 1883)
    assert parse_broker("[::1]:1884") == ("::1", 1884)
    for bad in ("host:x", ":1883", "host:0", "host:70000"):
        with pytest.raises(ConfigError):
            parse_broker(bad)


def test_salvage_ids_of_broken_commands() -> None:
    assert _salvage_ids(b"{not json") == ("invalid", 0)
    assert _salvage_ids(b'{"program": {"id": "p-7"}, "seq": 12}') == ("p-7", 12)
    assert _salvage_ids(b'{"program": {"id": "a/b#"}, "seq": -1}') == ("invalid", 0)
    assert _salvage_ids(b'{"program": [], "seq": true}') == ("invalid", 0)


def test_pacing_sleeps_one_simulated_second_per_wall_second_over_speed(
    model: JunctionModel,
) -> None:
    rig = Rig(model, speed=4.0)
    rig.run(9)
    assert rig.clock.sleeps == pytest.approx([0.25] * 8)
    states = [m for m in rig.link.sent if m.kind == "state"]
    assert len(states) == 9 and all(m.retain for m in states)


def test_lease_in_wall_seconds_holds_at_any_speed(model: JunctionModel) -> None:
    """A 30 s lease at speed 10 is 300 simulated seconds: never more, in either clock."""
    rig = Rig(model, speed=10.0)
    rig.run(3)
    plan = program(model, "p-1", extra=2)
    issued = rig.clock.wall()
    rig.plan(plan, 1, 30.0)
    rig.run(1)
    assert rig.acks()[-1].status is AckStatus.ACCEPTED
    rig.until_running("p-1", rig.fallback.cycle_s + 1)
    while rig.running() == "p-1":
        rig.run(1)
    fell_back = rig.driver.stats.fallback_events[-1]
    assert fell_back["event"] == "entered" and fell_back["reason"] == "lease expired"
    assert isinstance(fell_back["ts"], float)
    assert fell_back["ts"] <= issued + 30.0
    # ... and not absurdly early: the last full cycle that fitted was run.
    assert fell_back["ts"] > issued + 30.0 - 2 * plan.cycle_s / 10.0


def test_service_stopping_falls_back_at_the_next_switch_point(model: JunctionModel) -> None:
    rig = Rig(model, speed=1.0)
    rig.status(ServiceState.ONLINE)
    plan = program(model, "p-1", extra=2)
    rig.plan(plan, 1, 600.0)
    rig.run(1)
    rig.until_running("p-1", rig.fallback.cycle_s + 1)
    rig.run(10)
    rig.status(ServiceState.STOPPING)
    rig.run(1)
    steps = rig.until_running(rig.fallback.id, plan.cycle_s + 1)
    assert 0 < steps <= plan.cycle_s - 10
    assert rig.driver.hardware.state(rig.t).cycle_second == 0
    assert rig.driver.stats.fallback_events[-1]["reason"] == "service stopping"
    rig.plan(program(model, "p-2", extra=3), 2, 600.0)
    rig.run(1)
    refused = rig.acks()[-1]
    assert refused.status is AckStatus.REJECTED and "stopping" in refused.reason
    rig.run(2 * plan.cycle_s)
    assert rig.running() == rig.fallback.id


def test_rejected_plan_releases_the_running_one_and_its_renewals(
    model: JunctionModel,
) -> None:
    rig = Rig(model, speed=1.0)
    good = program(model, "p-1", extra=2)
    rig.plan(good, 1, 600.0)
    rig.run(1)
    rig.until_running("p-1", rig.fallback.cycle_s + 1)
    a, b = sorted(sorted(pair) for pair in model.signals.conflicts)[0]
    greens = dict(good.greens)
    greens[b] = greens[a]
    rig.plan(replace(good, id="p-bad", greens=greens, stage_plan=None), 2, 600.0)
    rig.run(1)
    assert rig.acks()[-1].status is AckStatus.REJECTED
    rig.plan(good, 3, 600.0)  # a renewal of the released program does not bring it back
    rig.run(1)
    renewal = rig.acks()[-1]
    assert renewal.status is AckStatus.REJECTED and "released" in renewal.reason
    rig.until_running(rig.fallback.id, good.cycle_s + 1)
    assert rig.driver.stats.fallback_events[-1]["reason"] == "rejected plan p-bad"
    rig.plan(good, 4, 600.0)  # once back on the fallback, the program may be pushed again
    rig.run(1)
    assert rig.acks()[-1].status is AckStatus.ACCEPTED


def test_redelivered_and_expired_commands_get_no_answer(model: JunctionModel) -> None:
    rig = Rig(model, speed=1.0)
    plan = program(model, "p-1", extra=2)
    rig.plan(plan, 5, 600.0)
    rig.run(1)
    assert len(rig.acks()) == 1
    rig.plan(plan, 5, 600.0)  # QoS 1 redelivery
    rig.plan(plan, 4, 600.0)  # older command
    rig.plan(program(model, "p-2", extra=3), 6, 10.0, age_s=11.0)  # lease over on arrival
    rig.run(1)
    assert len(rig.acks()) == 1
    assert rig.driver.stats.commands_ignored == 3


def test_garbage_is_answered_and_never_raises(model: JunctionModel) -> None:
    rig = Rig(model, speed=1.0)
    for payload in (b"", b"\xff\xfe", b"[]", b'{"program": {"id": "x"}, "seq": 3}',
                    b"x" * 20000, b'{"seq": 1e400}'):
        rig.push(payload)
    rig.push(b"nonsense", TopicKind.SERVICE_STATUS)
    rig.run(1)
    acks = rig.acks()
    assert len(acks) == 6 and all(a.status is AckStatus.REJECTED for a in acks)
    assert rig.driver.stats.status_malformed == 1
    assert rig.running() == rig.fallback.id
