"""A restarted service knows the program its predecessor pushed (state directory).

The service keeps the programs of its last pushed plans in ``$STATE_DIRECTORY``
(``controller.service.app.PLANS_FILE``, plan commands in the wire format).  After a
crash or SIGKILL the hardware may still run the last of them; the new process loads
them, has the core adopt those that pass the safety validator, and its first epochs
score that program and renew or replace it.  Without the file the program is unknown:
every epoch fails and the junction drops to its fallback when the lease lapses.

The end-to-end tests run the service as systemd does (a subprocess, SIGKILL, a new
process with the same state directory) against a real broker and the scripted field;
the unit tests check the file and the adoption in this process.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from _mqtt_broker import MosquittoBroker, running_broker
from test_service_harness import (
    FALLBACK_STAGES,
    JUNCTION,
    PUSH_ON_ANY_GAIN,
    ScriptedField,
    async_wait_for,
    fallback_program,
    field_running,
    metrics_up,
    model,
    running_service,
    scrape,
    service_config,
    service_online,
    value,
)

from controller.adaptive import AdaptiveCore
from controller.health import Degradation
from controller.messages import HardwareState, PlanCommand
from controller.plans import SignalProgram, StagePlan, compile_plan, group_states
from controller.safety import validate, validate_switch
from controller.service.app import (
    PLANS_FILE,
    PLANS_FORMAT,
    PLANS_KEPT,
    Service,
    load_fallback,
    load_published,
    save_published,
)
from controller.service.config import load_config
from controller.wire import ServiceState, ServiceStatus, decode_status, encode_plan

pytestmark = [pytest.mark.timeout(60)]

UNKNOWN = "unknown to this service"
#: The control waits this long after the restarted service is online for a plan that
#: must not come (with the state file, the plan follows within a second or two).
CONTROL_WAIT_S = 8.0


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    with running_broker(tmp_path / "broker") as b:
        yield b


# -- helpers ---------------------------------------------------------------------------------


def _command(program: SignalProgram, seq: int = 7) -> PlanCommand:
    now = time.time()
    return PlanCommand(program=program, issued=now, valid_from=now, lease_s=150.0, seq=seq)


def _safe_program(program_id: str, greens: tuple[int, ...] = (22, 14, 26, 12)) -> SignalProgram:
    program = compile_plan(model().signals, StagePlan(FALLBACK_STAGES, greens, 0), program_id)
    fallback = fallback_program()
    assert not validate(model().signals, program)
    assert not validate_switch(model().signals, program, fallback)
    return program


def _unsafe_program(program_id: str) -> SignalProgram:
    """Well-formed on the wire, but every group green all cycle: conflicting greens (V1)."""
    base = _safe_program(program_id)
    greens = {g: ((0, base.cycle_s),) for g in base.greens}
    return replace(base, greens=greens, stage_plan=None)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "atsc.service" and r.levelno == logging.WARNING]


def _in_process_service(tmp_path: Path, state_dir: Path,
                        monkeypatch: pytest.MonkeyPatch) -> Service:
    monkeypatch.setenv("STATE_DIRECTORY", str(state_dir))
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    cfg = load_config(service_config(tmp_path / "svc.toml"))
    return Service(cfg, model(), load_fallback(cfg, model().signals))


def _close(service: Service) -> None:
    service.scorer.close()
    service._core_thread.shutdown(wait=False)
    service.parts.close()


# -- the state file (unit) -------------------------------------------------------------------


def test_pushed_programs_round_trip_through_the_state_file_in_the_wire_format(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    programs = [_safe_program(f"atsc{k}-restored", (22, 10 + k, 26, 12)) for k in range(3)]
    commands = [_command(p, seq=k) for k, p in enumerate(programs)]
    path = save_published(tmp_path, JUNCTION, commands)
    assert path == tmp_path / PLANS_FILE
    assert not list(tmp_path.glob("*.tmp"))
    lines = path.read_bytes().splitlines()
    assert PLANS_FORMAT.encode() in lines[0]
    # Every further line is exactly the payload the hardware got.
    assert lines[1:] == [encode_plan(c) for c in commands]
    with caplog.at_level(logging.INFO):
        loaded = load_published(tmp_path, JUNCTION)
    assert loaded == commands
    assert not _warnings(caplog)
    # No state directory, no file (a first start): nothing, silently.
    assert load_published(None, JUNCTION) == []
    assert load_published(tmp_path / "empty", JUNCTION) == []
    assert not _warnings(caplog)


def test_the_state_file_keeps_the_newest_of_each_program_and_at_most_plans_kept(
    tmp_path: Path
) -> None:
    programs = [_safe_program(f"atsc{k}-p", (18, 10 + k, 26, 12)) for k in range(PLANS_KEPT + 2)]
    commands = [_command(p, seq=k) for k, p in enumerate(programs)]
    renewal = _command(programs[-2], seq=99)
    save_published(tmp_path, JUNCTION, [*commands, renewal])
    loaded = load_published(tmp_path, JUNCTION)
    assert len(loaded) == PLANS_KEPT
    assert loaded[-1] == renewal  # the renewed program counts as the newest
    older = [p.id for p in programs if p is not programs[-2]]
    assert [c.program.id for c in loaded[:-1]] == older[-(PLANS_KEPT - 1):]


def _garbage(tmp_path: Path, kind: str) -> None:
    path = tmp_path / PLANS_FILE
    header = f'{{"format":"{PLANS_FORMAT}","junction":"{JUNCTION}"}}'.encode()
    plan = encode_plan(_command(_safe_program("atsc1-x")))
    if kind == "unreadable":
        path.mkdir()  # reading a directory fails with an OSError
        return
    path.write_bytes({
        "garbage": b"\x00\xff\xfe not json at all \x80\n",
        "empty": b"",
        "truncated": header + b"\n" + plan[: len(plan) // 2] + b"\n",
        "nested": b"[" * 5000 + b"\n",
        "foreign_format": b'{"format":"something-else/1","junction":"' + JUNCTION.encode()
                          + b'"}\n' + plan + b"\n",
        "foreign_junction": f'{{"format":"{PLANS_FORMAT}","junction":"elsewhere"}}'.encode()
                            + b"\n" + plan + b"\n",
        "bad_plan": header + b"\n" + plan.replace(b'"lease_s":150.0', b'"lease_s":-1') + b"\n",
    }[kind])


@pytest.mark.parametrize("kind", ["garbage", "empty", "truncated", "nested", "foreign_format",
                                  "foreign_junction", "bad_plan", "unreadable"])
def test_a_corrupt_unreadable_or_foreign_state_file_is_ignored_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    _garbage(tmp_path, kind)
    with caplog.at_level(logging.INFO):
        assert load_published(tmp_path, JUNCTION) == []
    warnings = _warnings(caplog)
    assert len(warnings) == 1, warnings
    assert PLANS_FILE in warnings[0] and "ignoring" in warnings[0]


def test_service_with_a_garbage_state_file_starts_and_knows_only_the_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / PLANS_FILE).write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (state / "last_plan_seq").write_text("41\n")
    with caplog.at_level(logging.INFO):
        service = _in_process_service(tmp_path, state, monkeypatch)
    try:
        assert len(_warnings(caplog)) == 1
        assert service._programs == {service.fallback.id: service.fallback}
        assert service.core.knows(service.fallback.id)
        # The next new plan replaces the garbage with a valid file.
        program = _safe_program("atsc1-next")
        service._persist_program(_command(program))
        assert [c.program for c in load_published(state, JUNCTION)] == [program]
    finally:
        _close(service)


def test_a_program_failing_the_safety_validator_is_not_adopted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    safe = _safe_program("atsc3-safe")
    unsafe = _unsafe_program("atsc4-tampered")
    assert validate(model().signals, unsafe)  # it really is unsafe
    posing = replace(_safe_program("x", (22, 18, 26, 12)), id=fallback_program().id)
    # A tampered file: well-formed, right junction, but one program breaks the rules and
    # one claims the fallback's id.
    save_published(state, JUNCTION, [_command(safe, 1), _command(unsafe, 2),
                                     _command(posing, 3)])
    with caplog.at_level(logging.INFO):
        service = _in_process_service(tmp_path, state, monkeypatch)
    try:
        core = service.core
        assert core.knows(safe.id)
        assert not core.knows(unsafe.id)
        assert service._programs[fallback_program().id] == service.fallback
        assert set(service._programs) == {service.fallback.id, safe.id}
        warnings = _warnings(caplog)
        assert len(warnings) == 2, warnings
        assert any(unsafe.id in w and "safety validator" in w for w in warnings)
        assert any(service.fallback.id in w and "fallback" in w for w in warnings)
        # The next write keeps only what was adopted.
        service._persist_program(_command(safe, 9))
        assert [c.program.id for c in load_published(state, JUNCTION)] == [safe.id]
    finally:
        _close(service)


def _epoch_on(core: AdaptiveCore, program: SignalProgram, now: float,
              monkeypatch: pytest.MonkeyPatch) -> None:
    """The hardware reports ``program`` 5 s before its switch point (7 s before the
    fallback's), detectors healthy: ``advance`` starts an epoch, known program or not."""
    cs = program.cycle_s - 5
    assert fallback_program().cycle_s - cs <= core.config.decision_lead_s
    states = group_states(model().signals, program)
    core.on_state(HardwareState(
        ts=now, program_id=program.id, fallback=False, cycle_second=cs,
        signal_states="".join(states[g][cs] for g in model().signals.group_ids)))
    healthy = Degradation(True, "test", frozenset(), frozenset())
    monkeypatch.setattr(core.perception, "degradation", lambda: healthy)


def test_core_adopt_remembers_only_safe_programs_and_scores_the_adopted_running_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    adopting = _in_process_service(tmp_path, tmp_path, monkeypatch)  # no file in it
    control = _in_process_service(tmp_path, tmp_path, monkeypatch)
    try:
        core: AdaptiveCore = adopting.core
        safe = _safe_program("atsc5-a", (22, 26, 26, 12))  # cycle 116, near the fallback's
        unsafe = _unsafe_program("atsc6-b")
        adoption = core.adopt([safe, unsafe, safe])
        assert adoption.adopted == (safe,)
        assert [pid for pid, _ in adoption.refused] == [unsafe.id, safe.id]
        assert core.knows(safe.id) and not core.knows(unsafe.id)
        now = time.time()
        _epoch_on(core, safe, now, monkeypatch)
        step = core.advance(now)
        # The epoch scores the adopted program (the running one goes first).
        assert step.job is not None, core.last_decision
        assert step.job.running is safe and step.job.programs[0] is safe
        # Control: the same epoch in a core that did not adopt it fails.
        _epoch_on(control.core, safe, now, monkeypatch)
        assert control.core.advance(now).job is None
        last = control.core.last_decision
        assert last is not None and last.outcome == "failed" and UNKNOWN in last.reason
    finally:
        _close(adopting)
        _close(control)


# -- end to end: SIGKILL and restart -----------------------------------------------------------


class LeaseHoldingField(ScriptedField):
    """The scripted field, but a leased plan outlives the service's Last Will.

    The harness's field drops to its fallback on any status but ``online``; this one
    keeps running a pushed plan after ``offline`` until its lease runs out (the lease
    is the safety path), which is the restart this file is about.  ``ran`` records the
    program reported in every state message.
    """

    def __init__(self, broker: MosquittoBroker) -> None:
        super().__init__(broker)
        self.ran: list[str] = []

    def state(self, now: float) -> HardwareState:
        st = super().state(now)
        self.ran.append(st.program_id)
        return st

    async def _on_message(self, topic: str, payload: bytes) -> None:
        if topic.endswith("/service/status"):
            st = decode_status(payload)
            if isinstance(st, ServiceStatus) and st.state is ServiceState.OFFLINE:
                self.log.statuses.append(st.state.value)
                self.service_online = False
                return
        await super()._on_message(topic, payload)


async def _push_then_kill(cfg: Path, broker: MosquittoBroker, fld: LeaseHoldingField,
                          state: Path, log_path: Path) -> str:
    """A service (state in ``state``) until the field runs its plan; SIGKILL; that program."""
    env = {"STATE_DIRECTORY": str(state)}
    with running_service(cfg, broker.port, log_path, env=env) as svc:
        await service_online(svc, fld)
        await async_wait_for(lambda: fld.program is not fld.fallback, 30,
                             "an adaptive plan running at the field")
        svc.signal(signal.SIGKILL)
        assert await asyncio.to_thread(svc.wait, 10) == -signal.SIGKILL
    await async_wait_for(lambda: "offline" in fld.log.statuses, 10, "the Last Will")
    assert fld.program is not fld.fallback, "the field must keep the leased plan"
    pushed = fld.program.id
    # Written before the command left the service: the running program is on disk.
    assert pushed in [c.program.id for c in load_published(state, JUNCTION)]
    return pushed


def _decisions(log: str) -> list[str]:
    return [line for line in log.splitlines() if "decision epoch=" in line]


@pytest.mark.mosquitto
def test_restarted_service_renews_or_replaces_the_program_its_predecessor_pushed(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    cfg = service_config(tmp_path / "svc.toml", controller_extra=PUSH_ON_ANY_GAIN)
    state = tmp_path / "state"
    state.mkdir()

    async def scenario() -> tuple[str, str, str]:
        fld = LeaseHoldingField(broker)
        async with field_running(fld):
            pushed = await _push_then_kill(cfg, broker, fld, state, tmp_path / "first.log")
            n_plans, last_seq = len(fld.log.plans), fld.last_seq
            since_kill = len(fld.ran)
            with running_service(cfg, broker.port, tmp_path / "second.log",
                                 env={"STATE_DIRECTORY": str(state)}) as svc:
                await service_online(svc, fld)
                await async_wait_for(lambda: len(fld.log.plans) > n_plans, 30,
                                     "a plan from the restarted service")
                seq, program_id = fld.log.plans[n_plans]
                assert seq > last_seq and fld.last_seq >= seq, "the field refused the plan"
                # Up to that plan the junction ran the predecessor's program: no fallback.
                assert fld.fallback.id not in fld.ran[since_kill:]
                log = svc.log()
        return pushed, program_id, log

    pushed, program_id, log = asyncio.run(scenario())
    assert UNKNOWN not in log
    known = [line for line in log.splitlines() if "known again from before the restart" in line]
    assert len(known) == 1 and pushed in known[0], log
    # The first epoch scored the running program and renewed it (same id) or replaced it
    # (a new one); that command is the plan the field got.
    decisions = _decisions(log)
    assert f"running={pushed} " in decisions[0], decisions
    chose = next(d for d in decisions if f"chosen={program_id} " in d)
    assert f"running={pushed} chosen={program_id}" in chose, decisions
    assert ("outcome=kept" if program_id == pushed else "outcome=pushed") in chose, chose
    # The state file still holds what the hardware may run now.
    assert program_id in [c.program.id for c in load_published(state, JUNCTION)]


@pytest.mark.mosquitto
def test_control_without_the_state_file_the_running_program_is_unknown_and_never_renewed(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    cfg = service_config(tmp_path / "svc.toml", controller_extra=PUSH_ON_ANY_GAIN)
    state, empty = tmp_path / "state", tmp_path / "empty"
    state.mkdir()
    empty.mkdir()

    async def scenario() -> tuple[str, str]:
        fld = LeaseHoldingField(broker)
        async with field_running(fld):
            pushed = await _push_then_kill(cfg, broker, fld, state, tmp_path / "first.log")
            n_plans = len(fld.log.plans)
            with running_service(cfg, broker.port, tmp_path / "second.log",
                                 env={"STATE_DIRECTORY": str(empty)}) as svc:
                await service_online(svc, fld)
                await async_wait_for(lambda: UNKNOWN in svc.log(), 10,
                                     "the unknown program in the log")
                # The restarted service above had its plan out about a second after it
                # was online; this one, ready and deciding, pushes nothing: no epoch
                # can score the running program (its cycle, even, is unknown).
                await asyncio.sleep(CONTROL_WAIT_S)
                assert len(fld.log.plans) == n_plans, "nothing may be pushed or renewed"
                assert fld.program.id == pushed
                log = svc.log()
        return pushed, log

    pushed, log = asyncio.run(scenario())
    assert f"hardware runs program {pushed!r}, {UNKNOWN}" in log
    assert "known again from before the restart" not in log
    # Whether an epoch falls into the wait depends on the unknown program's cycle (the
    # service can only guess its switch points from the fallback's); what such an epoch
    # does, fail on the unknown program until the lease lapses, is the core's test
    # (test_adaptive_core: a core that does not know the running program).


@pytest.mark.mosquitto
def test_service_process_with_a_garbage_state_file_starts_and_warns_once(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    cfg = service_config(tmp_path / "svc.toml")
    state = tmp_path / "state"
    state.mkdir()
    (state / PLANS_FILE).write_bytes(b"{{{ not a plan file \xff\n")
    with running_service(cfg, broker.port, tmp_path / "svc.log",
                         env={"STATE_DIRECTORY": str(state)}) as svc:

        async def scenario() -> None:
            port = svc.metrics_port
            await async_wait_for(lambda: metrics_up(port), 30, "the metrics endpoint")
            await async_wait_for(lambda: value(scrape(port), "atsc_mqtt_connected") == 1, 20,
                                 "broker connection")

        asyncio.run(scenario())
        assert svc.alive()
        log = svc.log()
    warnings = [line for line in log.splitlines() if PLANS_FILE in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0] and "ignoring" in warnings[0], log
    assert "serving junction" in log and "Traceback" not in log
