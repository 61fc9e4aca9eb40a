"""`atsc field` against a real mosquitto: the test plays the service, the field runs in a
subprocess exactly as an engineer starts it (libsumo allows one simulation per process).

Windows are a few hundred simulated seconds at speed 40; every wait has a deadline, and
every check reads what actually crossed the broker or what the field wrote to hil.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from _mqtt_broker import (
    HOST,
    MosquittoBroker,
    field_identity,
    running_broker,
    service_identity,
)

from controller.messages import AckStatus, HardwareState, PlanAck, PlanCommand
from controller.plans import SignalProgram, StagePlan, compile_plan
from controller.webster import stage_min_greens
from controller.wire import (
    ReadingGate,
    Rejected,
    ServiceState,
    ServiceStatus,
    TopicKind,
    decode_ack,
    decode_state,
    encode_plan,
    encode_status,
    topic_for,
)
from sim.junction import JunctionModel, load_junction
from sim.monitor import check_program, check_switch
from sim.runner import case_from_scenario, fixed_time_plan

pytestmark = [pytest.mark.mosquitto, pytest.mark.sumo]

REPO = Path(__file__).resolve().parent.parent
J = "schlosskreuzung"
SCENARIO = "midday"
SPEED = 40.0
TOPIC: dict[TopicKind, str] = {
    k: topic_for(J, k) for k in TopicKind if k is not TopicKind.DETECTOR
}


# -- the junction, its fallback and the plans the test pushes ---------------------------------


@pytest.fixture(scope="module")
def model() -> JunctionModel:
    return load_junction(J)


@pytest.fixture(scope="module")
def fallback(model: JunctionModel) -> SignalProgram:
    """The program the field stores: the same Webster plan ``atsc run`` computes."""
    return fixed_time_plan(case_from_scenario(SCENARIO), model, ())[1]


def valid_program(model: JunctionModel, fallback: SignalProgram, pid: str) -> SignalProgram:
    seq = tuple(s.id for s in model.signals.stages)
    greens = list(stage_min_greens(model.signals, seq))
    greens[0] += 4  # visibly not the fallback: another cycle time
    program = compile_plan(model.signals, StagePlan(seq, tuple(greens)), pid)
    # Preconditions, not the test: the hardware's own check must pass this program.
    assert not check_program(model.signals, program)
    assert not check_switch(model.signals, fallback, program)
    assert not check_switch(model.signals, program, fallback)
    return program


def unsafe_program(model: JunctionModel, program: SignalProgram) -> SignalProgram:
    """Two conflicting groups green at the same time."""
    a, b = sorted(sorted(pair) for pair in model.signals.conflicts)[0]
    greens = dict(program.greens)
    greens[b] = greens[a]
    return replace(program, id="p-unsafe", greens=greens, stage_plan=None)


def command(program: SignalProgram, seq: int, lease_s: float) -> bytes:
    now = time.time()
    return encode_plan(PlanCommand(program=program, issued=now, valid_from=now,
                                   lease_s=lease_s, seq=seq))


def status(state: ServiceState) -> bytes:
    return encode_status(ServiceStatus(state=state, version="test", ts=time.time()))


# -- the field subprocess ---------------------------------------------------------------------


@dataclass
class FieldProc:
    proc: subprocess.Popen[bytes]
    out: Path
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def finish(self, timeout: float) -> dict[str, Any]:
        """Wait for the run to end by itself; return hil.json."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"field still running after {timeout} s:\n{self.tail()}")
        assert rc == 0, f"field exited {rc}:\n{self.tail()}"
        hil: dict[str, Any] = json.loads((self.out / "hil.json").read_text())
        assert (self.out / "kpis.json").is_file()
        assert (self.out / "report.html").is_file()
        return hil

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@contextlib.contextmanager
def field_process(tmp_path: Path, broker: MosquittoBroker, *, end_s: int,
                  extra: tuple[str, ...] = ()) -> Iterator[FieldProc]:
    out = tmp_path / "out"
    log = tmp_path / "field.log"
    cmd = [sys.executable, "-m", "controller.cli", "field", SCENARIO,
           "--broker", f"{HOST}:{broker.port}", "--speed", str(SPEED), "--end", str(end_s),
           "--out", str(out), *extra]
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    fp = FieldProc(proc, out, log)
    try:
        yield fp
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


# -- the test's side of the broker: a stand-in for the service --------------------------------


@dataclass
class Seen:
    """Everything the stand-in service received, decoded."""

    readings: dict[str, list[tuple[int, float]]] = field(default_factory=lambda: defaultdict(list))
    rejected_readings: list[Rejected] = field(default_factory=list)
    states: list[HardwareState] = field(default_factory=list)
    acks: list[PlanAck] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)


class Service:
    def __init__(self, client: aiomqtt.Client, model: JunctionModel) -> None:
        self.client = client
        self.seen = Seen()
        self.gate = ReadingGate({d.id: d for d in model.detectors}, J)

    async def collect(self) -> None:
        async for m in self.client.messages:
            topic, payload = str(m.topic), m.payload
            assert isinstance(payload, bytes)
            now = time.time()
            if "/det/" in topic:
                r = self.gate.admit(topic, payload, now)
                if isinstance(r, Rejected):
                    self.seen.rejected_readings.append(r)
                else:
                    self.seen.readings[r.detector_id].append((r.seq, r.ts))
            elif topic == TOPIC[TopicKind.STATE]:
                s = decode_state(payload, topic=topic)
                (self.seen.bad.append(str(s)) if isinstance(s, Rejected)
                 else self.seen.states.append(s))
            elif topic == TOPIC[TopicKind.PLAN_ACK]:
                a = decode_ack(payload, topic=topic)
                (self.seen.bad.append(str(a)) if isinstance(a, Rejected)
                 else self.seen.acks.append(a))

    async def publish(self, kind: TopicKind, payload: bytes, *, retain: bool = False) -> None:
        await self.client.publish(TOPIC[kind], payload, qos=1, retain=retain)

    async def wait(self, what: str, cond: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                last = self.seen.states[-1] if self.seen.states else None
                pytest.fail(f"timed out after {timeout} s waiting for {what}; "
                            f"last state {last}, acks {self.seen.acks}")
            await asyncio.sleep(0.02)

    async def ack_for(self, seq: int, timeout: float = 5.0) -> PlanAck:
        await self.wait(f"ack of seq {seq}",
                        lambda: any(a.seq == seq for a in self.seen.acks), timeout)
        return next(a for a in self.seen.acks if a.seq == seq)

    def running(self, program_id: str) -> bool:
        return bool(self.seen.states) and self.seen.states[-1].program_id == program_id \
            and not self.seen.states[-1].fallback

    def in_fallback(self) -> bool:
        return bool(self.seen.states) and self.seen.states[-1].fallback


@contextlib.asynccontextmanager
async def service(broker: MosquittoBroker, model: JunctionModel) -> AsyncIterator[Service]:
    async with aiomqtt.Client(**broker.client_kwargs(service_identity(J))) as client:
        for topic in (f"atsc/{J}/det/+", TOPIC[TopicKind.STATE], TOPIC[TopicKind.PLAN_ACK]):
            await client.subscribe(topic, qos=1)
        svc = Service(client, model)
        task = asyncio.create_task(svc.collect())
        try:
            await svc.wait("the field's first state", lambda: bool(svc.seen.states), 60)
            yield svc
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


def cycle_wall_s(program: SignalProgram) -> float:
    return program.cycle_s / SPEED


def lease_wall_s(fallback: SignalProgram, program: SignalProgram) -> float:
    """Room for reaching a switch point of the fallback plus one full cycle of the plan."""
    return (fallback.cycle_s + program.cycle_s + 40) / SPEED


# -- the tests ------------------------------------------------------------------------------


def test_readings_plans_and_lease_on_the_secure_broker(
    tmp_path: Path, model: JunctionModel, fallback: SignalProgram
) -> None:
    """Field identity over TLS: readings, garbage, unsafe plan, valid plan, renewal, lease."""
    program = valid_program(model, fallback, "p-hil-1")
    lease_s = lease_wall_s(fallback, program)
    timeline: dict[str, float] = {}

    async def play(b: MosquittoBroker) -> Seen:
        async with service(b, model) as svc:
            await svc.publish(TopicKind.SERVICE_STATUS, status(ServiceState.ONLINE), retain=True)
            every = {d.id for d in model.detectors}
            await svc.wait("three readings from every detector",
                           lambda: all(len(svc.seen.readings[d]) >= 3 for d in every), 20)

            await svc.publish(TopicKind.PLAN, b"{not json")
            await svc.publish(TopicKind.PLAN, b'{"program": {"id": "junk-1"}, "seq": 1000}')
            await svc.wait("two acks for garbage", lambda: len(svc.seen.acks) >= 2, 5)

            await svc.publish(TopicKind.PLAN, command(unsafe_program(model, program), 1, 60))
            unsafe = await svc.ack_for(1)
            timeline["unsafe_acked"] = time.time()
            # A full fallback cycle later the field must still run its own program.
            await asyncio.sleep(cycle_wall_s(fallback) + 0.5)

            await svc.publish(TopicKind.PLAN, command(program, 2, lease_s))
            accepted = await svc.ack_for(2)
            await svc.wait("the pushed program running", lambda: svc.running(program.id),
                           cycle_wall_s(fallback) + 2)
            await svc.publish(TopicKind.PLAN, command(program, 3, lease_s))
            timeline["renewed"] = time.time()
            renewed = await svc.ack_for(3)
            timeline["lease_end"] = timeline["renewed"] + lease_s
            await svc.wait("fallback after the lease", svc.in_fallback, lease_s + 3)

            assert unsafe.status is AckStatus.REJECTED and unsafe.reason, unsafe
            assert accepted.status is AckStatus.ACCEPTED, accepted
            assert renewed.status is AckStatus.ACCEPTED and "renew" in renewed.reason, renewed
            return svc.seen

    with running_broker(tmp_path / "broker", mode="secure") as b:
        password = tmp_path / "field.password"
        password.write_text(b.credentials(field_identity(J)).password + "\n")
        with field_process(tmp_path, b, end_s=600, extra=(
                "--username", field_identity(J), "--password-file", str(password),
                "--cafile", str(b.ca_file))) as fp:
            seen = asyncio.run(play(b))
            hil = fp.finish(60)

    # Readings: every detector, every one admitted by the service's own gate, seq rising.
    assert set(seen.readings) == {d.id for d in model.detectors}
    assert seen.rejected_readings == []
    for det, got in seen.readings.items():
        seqs = [s for s, _ in got]
        assert seqs == sorted(set(seqs)), f"{det}: seq not strictly increasing"
    assert seen.bad == []

    # Garbage: answered, never crashing; ids salvaged where the payload had them.
    junk = [a for a in seen.acks if a.program_id in ("invalid", "junk-1")]
    assert [a.status for a in junk] == [AckStatus.REJECTED] * 2
    assert {a.reason.split(":")[0] for a in junk} == {"malformed_json", "schema"}
    assert any(a.program_id == "junk-1" and a.seq == 1000 for a in junk)

    # The unsafe program never ran; the fallback ran until the valid plan took over.
    assert all(s.program_id != "p-unsafe" for s in seen.states)
    after_unsafe = [s for s in seen.states if timeline["unsafe_acked"] < s.ts]
    first_plan = next(i for i, s in enumerate(after_unsafe) if s.program_id == program.id)
    assert first_plan > 0
    assert all(s.fallback and s.program_id == fallback.id for s in after_unsafe[:first_plan])
    assert after_unsafe[first_plan].cycle_second == 0  # switched at a switch point

    # Lease: back on the fallback before the lease ran out, at a switch point.
    back = next(s for s in seen.states if s.ts > timeline["renewed"] and s.fallback)
    assert back.ts <= timeline["lease_end"] + 0.2, (back.ts, timeline["lease_end"])
    assert back.program_id == fallback.id and back.cycle_second == 0

    assert hil["monitor_faults"] == 0 and hil["field_monitor_faults"] == 0
    # What `atsc serve` is told is stored in the hardware is what the hardware ran.
    assert hil["fallback_program"] == fallback.to_json()
    assert json.loads((tmp_path / "out" / "fallback.json").read_text()) == fallback.to_json()
    assert hil["plans"]["accepted"] == 1 and hil["plans"]["lease_renewals"] == 1
    assert hil["plans"]["rejected"] == 3 and hil["plans"]["malformed"] == 2
    entered = [e for e in hil["fallback"]["events"] if e["event"] == "entered"]
    assert [e["reason"] for e in entered] == ["lease expired"]
    assert hil["messages"]["published"]["det"] >= 3 * len(model.detectors)
    assert hil["messages"]["published"]["ack"] == 5


def test_service_stopping_and_last_will_send_the_field_to_fallback(
    tmp_path: Path, model: JunctionModel, fallback: SignalProgram
) -> None:
    program = valid_program(model, fallback, "p-hil-2")
    other = valid_program(model, fallback, "p-hil-3")

    async def to_fallback(svc: Service, publish: Callable[[], Any]) -> None:
        t0 = time.time()
        await publish()
        await svc.wait("fallback after the status change", svc.in_fallback,
                       cycle_wall_s(program) + 3)
        first = next(s for s in svc.seen.states if s.ts > t0 and s.fallback)
        assert first.cycle_second == 0 and first.program_id == fallback.id

    async def play(b: MosquittoBroker) -> list[PlanAck]:
        async with service(b, model) as svc:
            await svc.publish(TopicKind.SERVICE_STATUS, status(ServiceState.ONLINE), retain=True)
            await svc.publish(TopicKind.PLAN, command(program, 1, 60))
            assert (await svc.ack_for(1)).status is AckStatus.ACCEPTED
            await svc.wait("plan running", lambda: svc.running(program.id),
                           cycle_wall_s(fallback) + 2)

            await to_fallback(svc, lambda: svc.publish(
                TopicKind.SERVICE_STATUS, status(ServiceState.STOPPING), retain=True))
            await svc.publish(TopicKind.PLAN, command(other, 2, 60))
            refused = await svc.ack_for(2)
            assert refused.status is AckStatus.REJECTED and "stopping" in refused.reason

            # A real Last Will: a service process that dies without saying goodbye.
            will = await start_will_client(b)
            try:
                await svc.publish(TopicKind.PLAN, command(other, 3, 60))
                assert (await svc.ack_for(3)).status is AckStatus.ACCEPTED
                await svc.wait("second plan running", lambda: svc.running(other.id),
                               cycle_wall_s(program) + cycle_wall_s(fallback) + 2)

                async def kill() -> None:
                    will.send_signal(signal.SIGKILL)
                    will.wait(10)

                await to_fallback(svc, kill)
            finally:
                if will.poll() is None:
                    will.kill()
                    will.wait(10)
            return svc.seen.acks

    with running_broker(tmp_path / "broker") as b, field_process(tmp_path, b, end_s=600) as fp:
        asyncio.run(play(b))
        hil = fp.finish(60)

    entered = [e for e in hil["fallback"]["events"] if e["event"] == "entered"]
    assert [e["reason"] for e in entered] == ["service stopping", "service offline"]
    # "Next switch point", in the field's own simulated seconds: each fallback began within
    # one cycle of the running plan after the status reached the field (and at a cycle
    # second 0, checked above), so at its first switch point, long before the 60 s lease.
    received = {s["state"]: s["sim_s"] for s in hil["service_status"]}
    for event, state, running in zip(entered, ["stopping", "offline"], [program, other],
                                     strict=True):
        assert event["from_program"] == running.id
        assert 0 <= event["sim_s"] - received[state] <= running.cycle_s, (event, received)
    states = [s["state"] for s in hil["service_status"]]
    assert states[:2] == ["online", "stopping"] and states[-1] == "offline"
    assert hil["monitor_faults"] == 0 and hil["field_monitor_faults"] == 0


WILL_CLIENT = """
import asyncio, sys, time, aiomqtt
from controller.wire import ServiceState, ServiceStatus, encode_status, topic_for, TopicKind
topic = topic_for(sys.argv[3], TopicKind.SERVICE_STATUS)
def st(s): return encode_status(ServiceStatus(state=s, version="test", ts=time.time()))
async def main():
    will = aiomqtt.Will(topic, st(ServiceState.OFFLINE), qos=1, retain=True)
    async with aiomqtt.Client(sys.argv[1], int(sys.argv[2]), will=will) as c:
        await c.publish(topic, st(ServiceState.ONLINE), qos=1, retain=True)
        print("ready", flush=True)
        await asyncio.sleep(3600)
asyncio.run(main())
"""


async def start_will_client(b: MosquittoBroker) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", WILL_CLIENT, b.host, str(b.port), J],
                            cwd=REPO, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    line = await asyncio.to_thread(proc.stdout.readline)
    proc.stdout.close()
    assert line.strip() == b"ready", line
    return proc


def test_broker_killed_and_restarted_field_runs_on_and_falls_back(
    tmp_path: Path, model: JunctionModel, fallback: SignalProgram
) -> None:
    """D3 + M4: the broker dies mid-lease; the field falls back on its own and reconnects."""
    program = valid_program(model, fallback, "p-hil-4")
    lease_s = lease_wall_s(fallback, program)
    det = model.detectors[0].id
    marks: dict[str, float] = {}

    async def before(b: MosquittoBroker) -> int:
        async with service(b, model) as svc:
            await svc.publish(TopicKind.SERVICE_STATUS, status(ServiceState.ONLINE), retain=True)
            marks["issued"] = time.time()
            await svc.publish(TopicKind.PLAN, command(program, 1, lease_s))
            assert (await svc.ack_for(1)).status is AckStatus.ACCEPTED
            await svc.wait("plan running", lambda: svc.running(program.id),
                           cycle_wall_s(fallback) + 2)
            await svc.wait("readings", lambda: bool(svc.seen.readings[det]), 5)
            return svc.seen.readings[det][-1][0]

    async def after(b: MosquittoBroker, seq_before: int, proc: FieldProc) -> Seen:
        async with service(b, model) as svc:
            await svc.wait("readings after the restart",
                           lambda: any(s > seq_before for s, _ in svc.seen.readings[det]), 15)
            await svc.wait("a fresh state", lambda: svc.seen.states[-1].ts > marks["restart"],
                           5)
            assert proc.alive()
            return svc.seen

    with running_broker(tmp_path / "broker") as b, field_process(tmp_path, b, end_s=800) as fp:
        seq_before = asyncio.run(before(b))
        b.kill()
        marks["killed"] = time.time()
        # Wait out the lease with the broker gone: only the hardware itself can fall back.
        time.sleep(max(0.0, marks["issued"] + lease_s + 0.5 - time.time()))
        assert fp.alive(), fp.tail()
        b.restart()
        marks["restart"] = time.time()
        seen = asyncio.run(after(b, seq_before, fp))
        hil = fp.finish(60)

    assert seen.states[-1].fallback and seen.states[-1].program_id == fallback.id
    gaps = [s for s, _ in seen.readings[det]]
    assert gaps == sorted(set(gaps)) and gaps[0] > seq_before
    entered = [e for e in hil["fallback"]["events"] if e["event"] == "entered"]
    assert [e["reason"] for e in entered] == ["lease expired"]
    assert marks["killed"] < entered[0]["ts"] <= marks["issued"] + lease_s
    assert hil["connection"]["connects"] >= 2
    assert any(e["event"] == "disconnected" for e in hil["connection"]["events"])
    assert hil["messages"]["dropped"].get("det", 0) > 0
    assert hil["monitor_faults"] == 0 and hil["field_monitor_faults"] == 0
