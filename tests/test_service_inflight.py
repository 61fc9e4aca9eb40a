"""Split decisions in the live service: while a decision's evaluation is in flight in a
worker process, detector readings keep reaching the estimator on the core thread.

The service runs in this process (so the test can see the core), against a real
mosquitto and the scripted field.  The evaluator scores in a worker process that blocks
on a multiprocessing event until the test opens it: the evaluation lasts exactly as
long as the test wants, and the test asserts on counts and order, never on timing.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from _mqtt_broker import MosquittoBroker, running_broker
from test_service_harness import (
    ScriptedField,
    async_wait_for,
    field_running,
    model,
    service_config,
)

from controller.adaptive import AnalyticEvaluator, AnalyticScore, Outcome
from controller.estimator import Estimate
from controller.messages import DetectorReading, HardwareState
from controller.plans import SignalProgram, group_states
from controller.service.app import Service, load_fallback
from controller.service.config import load_config
from controller.signals import JunctionSignals

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(180)]

#: The field's first switch point lies this far ahead: one epoch, with room to wait.
SWITCH_IN_S = 40


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    with running_broker(tmp_path / "broker") as b:
        yield b


def _gated_score(gate: Any, junction: JunctionSignals, snapshot: Estimate,
                 program: SignalProgram) -> AnalyticScore:
    """Worker-process entry: blocks until the test opens the gate, then scores."""
    gate.wait()
    return AnalyticEvaluator(junction).evaluate(snapshot, [program])[0]


class GatedEvaluator:
    """``submit`` like the SUMO twin: one future per program, computed in a worker process."""

    def __init__(self, junction: JunctionSignals, gate: Any) -> None:
        self.junction = junction
        self.gate = gate
        self.pool = ProcessPoolExecutor(max_workers=1,
                                        mp_context=multiprocessing.get_context("spawn"))
        self.submitted: list[list[Future[AnalyticScore]]] = []

    def submit(self, snapshot: Estimate,
               programs: Sequence[SignalProgram]) -> list[Future[AnalyticScore]]:
        futures = [self.pool.submit(_gated_score, self.gate, self.junction, snapshot, p)
                   for p in programs]
        self.submitted.append(futures)
        return futures


class FixedSwitchField(ScriptedField):
    """The scripted field with a real cycle whose first switch point is SWITCH_IN_S ahead."""

    def __init__(self, broker: MosquittoBroker) -> None:
        super().__init__(broker, pump_decisions=False)
        self.t0: float | None = None

    def state(self, now: float) -> HardwareState:
        if self.t0 is None:
            self.t0 = now
        prog = self.program
        cs = (prog.cycle_s - SWITCH_IN_S + int(now - self.t0)) % prog.cycle_s
        states = group_states(model().signals, prog)
        chars = "".join(states[g][cs] for g in model().signals.group_ids)
        return HardwareState(ts=now, program_id=prog.id, fallback=prog is self.fallback,
                             cycle_second=cs, signal_states=chars)


def test_readings_reach_the_estimator_while_an_evaluation_is_in_flight(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    path = service_config(tmp_path / "svc.toml",
                          controller_extra=f"decision_lead_s = {SWITCH_IN_S}")
    cfg = load_config(path).with_overrides(broker=f"127.0.0.1:{broker.port}")
    junction = model()
    service = Service(cfg, junction, load_fallback(cfg, junction.signals))
    core = service.core
    manager = multiprocessing.get_context("spawn").Manager()
    gate = manager.Event()
    gated = GatedEvaluator(junction.signals, gate)
    service.scorer.inner = gated
    # Per reading the core took in: the epoch whose evaluation was in flight, if any.
    seen: list[int | None] = []
    perception = service.parts.perception
    on_reading = perception.on_reading

    def spy(reading: DetectorReading, now: float) -> None:
        on_reading(reading, now)
        job = core.pending
        seen.append(None if job is None else job.epoch)

    perception.on_reading = spy  # type: ignore[method-assign]
    n_det = len(junction.detectors)

    async def scenario() -> None:
        stop = asyncio.Event()
        served = asyncio.create_task(service.run(stop))
        fld = FixedSwitchField(broker)
        try:
            async with field_running(fld):
                await fld.connected(1)
                await async_wait_for(lambda: service.transport.connected, 20, "the service")
                await fld.burst()
                await async_wait_for(lambda: bool(gated.submitted), 60,
                                     "a decision's evaluation in the worker")
                job = core.pending
                assert job is not None and job.programs[0].id == fld.fallback.id
                futures = gated.submitted[0]
                recorded = core.stats.recorded
                before = seen.count(job.epoch)
                # Three more seconds of every detector reach the estimator while the
                # worker is still blocked in the evaluation.
                await async_wait_for(lambda: seen.count(job.epoch) >= before + 3 * n_det, 60,
                                     "readings during the evaluation")
                assert not any(f.done() for f in futures)
                assert core.pending is job
                assert core.stats.recorded == recorded  # the epoch is not finished
                gate.set()
                await async_wait_for(lambda: any(d.epoch == job.epoch for d in core.decisions),
                                     60, "the decision to complete")
                decision = next(d for d in core.decisions if d.epoch == job.epoch)
                assert decision.outcome in (Outcome.PUSHED, Outcome.KEPT), decision.reason
                assert len(decision.candidates) >= 1
                # Order: in flight, then done, and the core kept ingesting afterwards.
                after = len(seen)
                await async_wait_for(lambda: len(seen) >= after + n_det, 30,
                                     "readings after the decision")
                first = seen.index(job.epoch)
                tagged = seen[first:after]
                assert tagged.count(job.epoch) >= 3 * n_det
                assert core.pending is None or core.pending.epoch != job.epoch
        finally:
            stop.set()
            await asyncio.wait_for(served, 20)

    try:
        asyncio.run(scenario())
    finally:
        gate.set()
        gated.pool.shutdown(wait=True, cancel_futures=True)
        manager.shutdown()


@pytest.mark.sumo
def test_twin_workers_that_cannot_start_stop_the_service_with_exit_1(
    broker: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A twin whose workers die at start-up (here: its network is missing) would leave an
    'online' service that never adapts; it stops instead, for systemd to restart or show."""
    from dataclasses import replace

    from controller.twin import SumoTwin
    from sim.twin_config import twin_config_from_model

    cfg = load_config(service_config(tmp_path / "svc.toml")).with_overrides(
        broker=f"127.0.0.1:{broker.port}")
    junction = model()
    service = Service(cfg, junction, load_fallback(cfg, junction.signals))
    missing = replace(twin_config_from_model(junction, horizon_s=300),
                      net_file=str(tmp_path / "missing.net.xml"))
    broken = SumoTwin(missing, workers=1)
    service.parts = replace(service.parts, warm_up=broken.warm_up, close=broken.close)

    async def serve() -> int:
        return await asyncio.wait_for(service.run(asyncio.Event()), 120)

    assert asyncio.run(serve()) == 1
    assert "the twin's worker processes failed to start" in caplog.text
