"""The adaptive controller core: a sans-I/O state machine from detector messages to plans.

Inputs are the messages of the wire contract (detector readings, hardware
states, plan acknowledgements) and the caller's ``now``; outputs are
``PlanCommand`` values.  The core reads no clock, opens no socket and knows
no SUMO: the candidate evaluator (the SUMO twin in production) and the
optimiser are injected, and a shell (``controller.transport.exchange``)
moves messages between a transport and the core.

Once per running cycle, ``decision_lead_s`` before the hardware's next
switch point, a *decision epoch* runs:

1. health (safety.md D1/D2, D5): if too many detectors are faulty, push
   nothing, so the hardware's lease on the running plan lapses and it
   returns to its own fallback program;
2. estimate demand and queues per signal group;
3. the optimiser proposes candidate programs;
4. the evaluator scores every candidate and the running program over its
   horizon (person delay);
5. walking the candidates from best to worst: with the pedestrian floor on
   (``pedestrian_slack_s``), a candidate whose pedestrians would wait longer than
   under the fallback plus the slack is skipped; a candidate must beat the
   running program by ``margin`` and pass the safety gate
   (``controller.safety.validate``, including the switch from the running
   program and the switch back to the fallback); the first that does is
   pushed with a lease.  A candidate that fails the gate is never pushed;
6. otherwise the running adaptive program's lease is renewed (a new command
   with the same program and a new sequence number).

Every epoch leaves a ``Decision`` record (scores, choice, reason, latency
parts) for logs and metrics.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Protocol

from controller.estimator import (
    Estimate,
    Estimator,
    EstimatorConfig,
    PocketSpill,
    green_from_state,
    hcm_delay_s,
)
from controller.health import Degradation, HealthConfig, HealthMonitor, assess
from controller.messages import (
    AckStatus,
    DetectorInfo,
    DetectorReading,
    HardwareState,
    PlanAck,
    PlanCommand,
)
from controller.plans import SignalProgram, compile_plan, stage_green_times
from controller.safety import DEFAULT_LIMITS, SafetyLimits, Violation, validate, validate_switch
from controller.signals import JunctionSignals
from controller.webster import webster_plan

# -- injected parts ---------------------------------------------------------------


class Score(Protocol):
    """What the core reads of an evaluator's score (``controller.twin.TwinScore``)."""

    @property
    def program_id(self) -> str: ...

    @property
    def person_delay_s(self) -> float: ...

    @property
    def pedestrian_delay_s(self) -> float | None: ...


class Evaluator(Protocol):
    """Scores signal programs from a snapshot (``controller.twin.SumoTwin``)."""

    def evaluate(self, snapshot: Any, programs: Sequence[SignalProgram]) -> Sequence[Score]: ...


class Candidate(Protocol):
    """What the core reads of a proposed candidate (``controller.optimiser.Candidate``)."""

    @property
    def program(self) -> SignalProgram: ...

    @property
    def label(self) -> str: ...

    @property
    def analytic_delay_s(self) -> float: ...


class Proposer(Protocol):
    """Candidate generator (``controller.optimiser.propose`` with its config bound)."""

    def __call__(
        self,
        junction: JunctionSignals,
        estimate: Estimate,
        running: SignalProgram,
        fallback: SignalProgram,
        *,
        program_prefix: str,
    ) -> Sequence[Candidate]: ...


class RunningCheck(Protocol):
    """Why the running program must not be renewed, or None (``optimiser.capacity_check``)."""

    def __call__(
        self,
        junction: JunctionSignals,
        estimate: Estimate,
        running: SignalProgram,
        fallback: SignalProgram,
    ) -> str | None: ...


class SnapshotSource(Protocol):
    """Builds the evaluator's starting state from messages (``controller.twin.SnapshotBuilder``)."""

    def observe(self, reading: DetectorReading) -> None: ...

    def observe_state(self, state: HardwareState) -> None: ...

    def snapshot(
        self, now: float, estimate: Estimate, running: SignalProgram, cycle_second: int
    ) -> Any: ...


class Perception(Protocol):
    """Everything the core knows about traffic: health, estimate, evaluator snapshot.

    ``DetectorPerception`` is the only implementation the service uses; the
    evaluation-only oracle (``sim.adaptive_driver``) swaps in ground truth.
    """

    def on_reading(self, reading: DetectorReading, now: float) -> None: ...

    def on_state(self, state: HardwareState) -> None: ...

    def tick(self, now: float) -> None: ...

    def degradation(self) -> Degradation: ...

    def estimate(self, now: float, running: SignalProgram) -> Estimate: ...

    def snapshot(
        self, now: float, estimate: Estimate, running: SignalProgram, cycle_second: int
    ) -> Any: ...


class DetectorPerception:
    """Detector health (D1/D2), the estimator and the twin snapshot, fed by messages only."""

    def __init__(
        self,
        junction: JunctionSignals,
        detectors: Sequence[DetectorInfo],
        snapshots: SnapshotSource,
        *,
        health: HealthConfig | None = None,
        estimator: EstimatorConfig | None = None,
        lanes_per_group: Mapping[str, int] | None = None,
        turns: Mapping[str, str] | None = None,
        pockets: Sequence[PocketSpill] = (),
    ) -> None:
        self.junction = junction
        self.detectors = tuple(detectors)
        self.monitor = HealthMonitor(self.detectors, health)
        self.estimator = Estimator(
            self.detectors, lanes_per_group, estimator, turns, pockets=pockets)
        self.snapshots = snapshots

    def on_reading(self, reading: DetectorReading, now: float) -> None:
        self.monitor.observe(reading, now)
        self.estimator.observe(reading)
        self.snapshots.observe(reading)

    def on_state(self, state: HardwareState) -> None:
        self.estimator.observe_signals(state.ts, green_from_state(state, self.junction.group_ids))
        self.snapshots.observe_state(state)

    def tick(self, now: float) -> None:
        self.monitor.tick(now)

    def degradation(self) -> Degradation:
        return assess(self.detectors, self.monitor.faulty(), self.monitor.config)

    def estimate(self, now: float, running: SignalProgram) -> Estimate:
        split = {g: s / running.cycle_s for g, s in stage_green_times(running).items()}
        return self.estimator.estimate(
            now, self.monitor.faulty(), green_split=split, cycle_s=running.cycle_s
        )

    def snapshot(
        self, now: float, estimate: Estimate, running: SignalProgram, cycle_second: int
    ) -> Any:
        return self.snapshots.snapshot(now, estimate, running, cycle_second)


# -- configuration and records ------------------------------------------------------


#: The pedestrian floor's slack where it is switched on without one (service, scenarios).
PEDESTRIAN_SLACK_S = 1.0


@dataclass(frozen=True)
class AdaptiveConfig:
    """Parameters of the decision loop (see docs/adaptive.md)."""

    #: A candidate must beat the running program's predicted person delay by this share.
    #: 3 % since the twin's drivers were calibrated (session 14 in docs/adaptive.md); the
    #: 5 % before held back gains the calibrated twin predicts correctly.
    margin: float = 0.03
    #: ... and by at least this many seconds per person (twin noise is not an improvement).
    min_gain_s: float = 0.2
    #: Lease of a pushed or renewed plan, in cycles of that plan.  Above 2 + lead/cycle,
    #: one missed renewal costs nothing; a lost service hands back within 2-3 cycles.
    lease_cycles: float = 2.5
    #: Seconds before the next switch point at which a decision epoch runs; capped at
    #: half the running cycle so a missed renewal is still covered by the lease.
    decision_lead_s: int = 12
    #: A hardware state older than this means no contact with the hardware: no epoch.
    max_state_age_s: float = 5.0
    #: Program ids are ``<prefix><epoch>...``; must satisfy the wire id pattern.
    program_prefix: str = "atsc"
    #: Rule values of the safety gate (never changed by the optimiser).
    limits: SafetyLimits = DEFAULT_LIMITS
    #: Decision records kept for logs and metrics.
    history: int = 500
    #: Programs the core remembers by id (to recognise what the hardware runs).
    remembered_programs: int = 16
    #: Pedestrian floor (a policy, off by default): no plan is pushed or renewed whose
    #: predicted delay per pedestrian exceeds the fallback's, over the same horizon, by
    #: more than this many seconds.  ``None``: plans are ranked by person delay alone.
    #: Measured price of 1 s on the Schlosskreuzung in docs/adaptive.md (session 7).
    pedestrian_slack_s: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.margin < 1.0:
            raise ValueError("margin must be within [0, 1)")
        if self.min_gain_s < 0:
            raise ValueError("min_gain_s must not be negative")
        if self.lease_cycles <= 1.0:
            raise ValueError("lease_cycles must exceed 1 (a plan must survive its first cycle)")
        if self.decision_lead_s < 1:
            raise ValueError("decision_lead_s must be at least 1 s")
        if self.history < 1 or self.remembered_programs < 2:
            raise ValueError("history and remembered_programs must be positive")
        if self.pedestrian_slack_s is not None and not self.pedestrian_slack_s >= 0.0:
            raise ValueError("pedestrian_slack_s must be None or at least 0 s")


class Outcome(StrEnum):
    """What a decision epoch did."""

    #: A new plan was pushed.
    PUSHED = "pushed"
    #: The running program stays (its lease renewed when it is an adaptive plan).
    KEPT = "kept"
    #: Adaptive control not allowed (detector health): nothing pushed, the lease lapses.
    FALLBACK = "fallback"
    #: Optimiser or evaluator failed, or the running program is unknown: nothing pushed.
    FAILED = "failed"
    #: The scores came back stale (another running program, the switch point passed,
    #: a newer epoch started): dropped, nothing pushed.
    DROPPED = "dropped"


@dataclass(frozen=True, slots=True)
class CandidateRecord:
    """One candidate as the decision saw it."""

    program_id: str
    label: str
    analytic_delay_s: float | None
    #: Evaluator's person delay; ``None`` when the evaluator gave no score.
    person_delay_s: float | None
    #: Safety-gate violations; ``None`` when the gate was not reached for it.
    violations: tuple[str, ...] | None = None
    #: Why it was refused before the gate (the pedestrian floor); ``None``: it was not.
    refused: str | None = None
    #: Evaluator's delay per pedestrian; ``None`` when it predicts none.
    pedestrian_delay_s: float | None = None


@dataclass(frozen=True, slots=True)
class Latency:
    """Where a decision's time went, seconds (zeros without an injected timer)."""

    estimate_s: float = 0.0
    propose_s: float = 0.0
    snapshot_s: float = 0.0
    evaluate_s: float = 0.0
    validate_s: float = 0.0
    total_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Decision:
    """Diagnostics of one decision epoch."""

    ts: float
    epoch: int
    outcome: Outcome
    reason: str
    running_id: str
    running_delay_s: float | None
    candidates: tuple[CandidateRecord, ...]
    #: Program id pushed (PUSHED) or renewed (KEPT with a renewal), else ``None``.
    chosen: str | None
    renewed: bool
    latency: Latency
    #: Switch point the epoch prepared for (hardware time).
    switch_at: float


@dataclass
class CoreStats:
    """Counters over the core's life (for metrics and run reports)."""

    decisions: int = 0
    plans_pushed: int = 0
    renewals: int = 0
    acks_accepted: int = 0
    rejected_by_hardware: int = 0
    #: Candidates refused by the safety gate, per rule (V1-V6, D4).
    rejected_by_rule: Counter[str] = field(default_factory=Counter)
    #: Candidates refused by the pedestrian floor (predicted pedestrian delay above the
    #: fallback's plus the slack).
    pedestrian_floor_refusals: int = 0
    #: Epochs in which adaptive control was not allowed.
    fallback_decisions: int = 0
    #: Changes from "adaptive allowed" to "not allowed" (hand-overs to the fallback).
    handovers: int = 0
    failures: int = 0
    #: Epochs whose scores arrived stale and were dropped (split decisions).
    dropped: int = 0
    #: Decision records made so far (an epoch is recorded when it finishes).
    recorded: int = 0
    hardware_reject_reasons: list[str] = field(default_factory=list)


def _no_clock() -> float:
    return 0.0


# -- the core ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EvaluationFailed:
    """An evaluation that gave no scores (the evaluator raised, timed out, lost a worker)."""

    reason: str


@dataclass(frozen=True, slots=True)
class ProgramScore:
    """What a decision reads of one program's predicted performance."""

    #: Mean delay per person (car and bus passengers, pedestrians): the ranking.
    person_delay_s: float
    #: Mean delay per pedestrian (the pedestrian floor); ``None``: not predicted.
    pedestrian_delay_s: float | None = None


#: What ``AdaptiveCore.complete`` takes: the scores per program id, or why there are none.
EvaluationResult = Mapping[str, ProgramScore] | EvaluationFailed


def scores_by_program(scores: Iterable[Score]) -> dict[str, ProgramScore]:
    """An evaluator's scores as ``complete`` takes them, by program id."""
    return {
        s.program_id: ProgramScore(float(s.person_delay_s),
                                   _float_or_none(s.pedestrian_delay_s))
        for s in scores
    }


@dataclass(frozen=True, slots=True)
class PedestrianFloor:
    """The most predicted delay per pedestrian a plan may have (``pedestrian_slack_s``)."""

    #: The fallback's predicted delay per pedestrian this epoch; ``None``: no floor.
    fallback_s: float | None
    slack_s: float

    def breach(self, program_id: str, scores: Mapping[str, ProgramScore]) -> str | None:
        """Why ``program_id`` serves pedestrians below the floor, or None (also without a
        prediction)."""
        sc = scores.get(program_id)
        ped = None if sc is None else sc.pedestrian_delay_s
        if self.fallback_s is None or ped is None or ped <= self.fallback_s + self.slack_s + 1e-9:
            return None
        return (f"predicted pedestrian delay {ped:.1f} s exceeds the fallback's "
                f"{self.fallback_s:.1f} s + {self.slack_s:g} s")


@dataclass(frozen=True, eq=False)
class EvaluationJob:
    """A started decision epoch waiting for its scores.

    ``snapshot`` and ``programs`` (the running program first, then every
    candidate) are all an evaluator gets; the rest is what ``complete`` needs
    to finish the epoch.  The snapshot is built from detector messages only.
    """

    epoch: int
    #: The core's ``now`` when the epoch started (the decision's ``ts``).
    now: float
    #: The switch point the epoch prepares for; scores arriving at or after it are stale.
    switch_at: float
    snapshot: Any
    programs: tuple[SignalProgram, ...]
    running: SignalProgram
    #: The hardware state the epoch started from.
    state: HardwareState
    candidates: tuple[Candidate, ...]
    #: Timer readings (latency only): epoch start, and end of the snapshot.
    started: float
    evaluating_since: float
    #: Latency parts so far (estimate, propose, snapshot).
    latency: Latency
    #: Why the running program may not be renewed (``RunningCheck``); None: it may.
    retire: str | None = None


@dataclass(frozen=True, slots=True)
class Adoption:
    """What ``AdaptiveCore.adopt`` did with the programs it was given."""

    #: Programs now remembered, in the order given.
    adopted: tuple[SignalProgram, ...]
    #: ``(program id, why)`` of every program not remembered.
    refused: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Advance:
    """What ``AdaptiveCore.advance`` returns: commands to publish now, and a job to score."""

    commands: list[PlanCommand]
    job: EvaluationJob | None


class AdaptiveCore:
    """Sans-I/O adaptive controller for one junction.

    ``fallback`` is the program stored in the hardware (the core needs it for
    the switch-back check and as the reference while the hardware runs it).
    ``timer`` only measures decision latency; it never influences a
    decision, so a replay with another timer issues the same commands.
    ``first_seq`` lets a restarted service continue above sequence numbers the
    hardware has already seen.
    """

    def __init__(
        self,
        junction: JunctionSignals,
        fallback: SignalProgram,
        *,
        perception: Perception,
        proposer: Proposer,
        evaluator: Evaluator,
        config: AdaptiveConfig | None = None,
        timer: Callable[[], float] = _no_clock,
        first_seq: int = 1,
        running_check: RunningCheck | None = None,
    ) -> None:
        self.junction = junction
        self.fallback = fallback
        self.perception = perception
        self.proposer = proposer
        self.running_check = running_check
        self.evaluator = evaluator
        self.config = config or AdaptiveConfig()
        self.stats = CoreStats()
        self.decisions: deque[Decision] = deque(maxlen=self.config.history)
        self._timer = timer
        self._seq = first_seq - 1
        self._epoch = 0
        self._state: HardwareState | None = None
        # Programs this core pushed, by id, so a reported program id can be resolved.
        self._programs: dict[str, SignalProgram] = {fallback.id: fallback}
        self._decided_switch: float | None = None
        self._adaptive_allowed = False
        self._last_push_seq: int | None = None
        self._renew_now = False
        self._pending: EvaluationJob | None = None

    # -- inputs ----------------------------------------------------------------
    def on_reading(self, reading: DetectorReading, now: float) -> None:
        self.perception.on_reading(reading, now)

    def on_state(self, state: HardwareState) -> None:
        if self._state is not None and state.ts < self._state.ts:
            return
        self._state = state
        self.perception.on_state(state)

    def on_ack(self, ack: PlanAck) -> None:
        if ack.status is AckStatus.ACCEPTED:
            self.stats.acks_accepted += 1
            return
        self.stats.rejected_by_hardware += 1
        if len(self.stats.hardware_reject_reasons) < 50:
            self.stats.hardware_reject_reasons.append(f"{ack.program_id}: {ack.reason}")
        if ack.seq == self._last_push_seq and self._adaptive_allowed:
            # The new plan was refused; keep the running adaptive plan alive rather
            # than dropping to the fallback for a plan the hardware did not want.
            self._renew_now = True

    # -- time --------------------------------------------------------------------
    def tick(self, now: float) -> list[PlanCommand]:
        """Advance the clock and decide synchronously; the plan commands to publish now.

        The synchronous convenience path (scenario runs, tests): ``advance``, then
        the evaluator inline (``evaluate``), then ``complete``, all at ``now``.
        The live service uses the three steps itself so that the evaluation
        never blocks the core (docs/adaptive.md, "Split decisions").
        """
        step = self.advance(now)
        if step.job is None:
            return step.commands
        return step.commands + self.complete(step.job, self.evaluate(step.job), now)

    def advance(self, now: float) -> Advance:
        """Advance the clock: health checks, renewals, and the start of a due epoch.

        Returns the commands to publish now and, when an epoch started that needs
        scores, the ``EvaluationJob`` (snapshot + programs).  The caller has the
        job scored (``evaluate`` inline, or the twin's futures) and hands the
        result to ``complete``.  Meanwhile every other entry point stays usable.
        """
        self.perception.tick(now)
        state = self._state
        if state is None or now - state.ts > self.config.max_state_age_s:
            return Advance([], None)
        running = self._programs.get(state.program_id)
        out: list[PlanCommand] = []
        if self._renew_now:
            self._renew_now = False
            if running is not None and not state.fallback:
                out.append(self._command(running, now))
                self.stats.renewals += 1
        pending = self._pending
        if pending is not None and self._stale(pending, now) is None:
            # One decision at a time: a due epoch waits for the pending one's scores.
            return Advance(out, None)
        switch_at = self._switch_at(state, running)
        cycle = running.cycle_s if running is not None else self.fallback.cycle_s
        lead = min(self.config.decision_lead_s, max(1, cycle // 2))
        if self._decided_switch is not None and abs(switch_at - self._decided_switch) < 0.5:
            return Advance(out, None)
        if switch_at - now > lead:
            return Advance(out, None)
        self._decided_switch = switch_at
        return Advance(out, self._start(now, state, running, switch_at))

    def _switch_at(self, state: HardwareState, running: SignalProgram | None) -> float:
        cycle = running.cycle_s if running is not None else self.fallback.cycle_s
        return state.ts + cycle - state.cycle_second

    @property
    def pending(self) -> EvaluationJob | None:
        """The started decision whose scores are awaited, if any."""
        return self._pending

    def evaluate(self, job: EvaluationJob) -> EvaluationResult:
        """Score ``job`` with the injected evaluator, blocking (the synchronous path)."""
        try:
            return scores_by_program(self.evaluator.evaluate(job.snapshot, list(job.programs)))
        except Exception as exc:
            # A broken twin must not take the controller down: the decision fails.
            return EvaluationFailed(f"{type(exc).__name__}: {exc}")

    # -- decisions ---------------------------------------------------------------
    def _record(
        self,
        *,
        ts: float,
        epoch: int,
        state: HardwareState,
        switch_at: float,
        outcome: Outcome,
        reason: str,
        started: float,
        running_delay: float | None = None,
        candidates: tuple[CandidateRecord, ...] = (),
        chosen: str | None = None,
        renewed: bool = False,
        latency: Latency | None = None,
    ) -> None:
        self.stats.recorded += 1
        self.decisions.append(
            Decision(
                ts=ts, epoch=epoch, outcome=outcome, reason=reason,
                running_id=state.program_id, running_delay_s=running_delay,
                candidates=candidates, chosen=chosen, renewed=renewed,
                latency=latency or Latency(total_s=self._timer() - started),
                switch_at=switch_at,
            )
        )

    def _start(
        self, now: float, state: HardwareState, running: SignalProgram | None, switch_at: float
    ) -> EvaluationJob | None:
        """Steps 1-3 of an epoch: health, estimate, candidates, snapshot; the job to score."""
        cfg = self.config
        clock = self._timer
        t0 = clock()
        self._epoch += 1
        self.stats.decisions += 1
        epoch = self._epoch
        # A newer epoch supersedes a decision still waiting for its scores.
        self._pending = None

        def record(outcome: Outcome, reason: str) -> None:
            self._record(ts=now, epoch=epoch, state=state, switch_at=switch_at,
                         outcome=outcome, reason=reason, started=t0)

        degradation = self.perception.degradation()
        if not degradation.adaptive_allowed:
            if self._adaptive_allowed:
                self.stats.handovers += 1
            self._adaptive_allowed = False
            self.stats.fallback_decisions += 1
            record(Outcome.FALLBACK, f"adaptive control suspended: {degradation.reason}")
            return None
        self._adaptive_allowed = True
        if running is None:
            self.stats.failures += 1
            record(Outcome.FAILED, f"hardware runs {state.program_id!r}, unknown to this service")
            return None

        t1 = clock()
        try:
            estimate = self.perception.estimate(now, running)
            t2 = clock()
            proposed = tuple(
                self.proposer(
                    self.junction, estimate, running, self.fallback,
                    program_prefix=f"{cfg.program_prefix}{epoch}",
                )
            )
            retire = None
            if self.running_check is not None and not state.fallback:
                retire = self.running_check(self.junction, estimate, running, self.fallback)
            t3 = clock()
            snapshot = self.perception.snapshot(now, estimate, running, state.cycle_second)
            t4 = clock()
        except Exception as exc:
            # A broken optimiser must not take the controller down: the running plan
            # is simply not renewed, and the hardware falls back.
            self.stats.failures += 1
            record(Outcome.FAILED, f"decision failed: {type(exc).__name__}: {exc}")
            return None
        job = EvaluationJob(
            epoch=epoch, now=now, switch_at=switch_at, snapshot=snapshot,
            programs=(running, *(c.program for c in proposed)), running=running, state=state,
            candidates=proposed, started=t0, evaluating_since=t4,
            latency=Latency(estimate_s=t2 - t1, propose_s=t3 - t2, snapshot_s=t4 - t3),
            retire=retire,
        )
        self._pending = job
        return job

    def _stale(self, job: EvaluationJob, now: float) -> str | None:
        """Why the scores of ``job`` no longer apply, or ``None`` while they would."""
        state = self._state
        assert state is not None  # a job exists only after a state
        if state.program_id != job.state.program_id or state.fallback != job.state.fallback:
            return (f"the running program changed from {job.state.program_id!r} to "
                    f"{state.program_id!r} while the twin evaluated")
        if now >= job.switch_at:
            return f"the switch point {job.switch_at:.1f} passed while the twin evaluated"
        return None

    def complete(
        self, job: EvaluationJob, result: EvaluationResult, now: float
    ) -> list[PlanCommand]:
        """Steps 4-6 of an epoch: scores in, choice, margin, safety gate, push or renew.

        ``result`` maps program ids to predicted person delay (``scores_by_program``
        of the evaluator's scores) or says why there is none.  A stale result (the
        running program changed, the switch point passed, a newer epoch started)
        is dropped: recorded as ``Outcome.DROPPED``, nothing sent.
        """
        cfg = self.config
        clock = self._timer
        t5 = clock()
        running, state, epoch, t0 = job.running, job.state, job.epoch, job.started
        adaptive_plan = not state.fallback

        def record(
            outcome: Outcome,
            reason: str,
            *,
            running_delay: float | None = None,
            candidates: tuple[CandidateRecord, ...] = (),
            chosen: str | None = None,
            renewed: bool = False,
            latency: Latency | None = None,
        ) -> None:
            self._record(ts=job.now, epoch=epoch, state=state, switch_at=job.switch_at,
                         outcome=outcome, reason=reason, started=t0,
                         running_delay=running_delay, candidates=candidates, chosen=chosen,
                         renewed=renewed, latency=latency)

        stale = ("a newer epoch started (or it was completed already)"
                 if job is not self._pending else self._stale(job, now))
        if stale is not None:
            if job is self._pending:
                self._pending = None
            self.stats.dropped += 1
            record(Outcome.DROPPED, f"scores dropped: {stale}")
            return []
        self._pending = None
        if isinstance(result, EvaluationFailed):
            self.stats.failures += 1
            record(Outcome.FAILED, f"decision failed: {result.reason}")
            return []
        scores = {pid: sc.person_delay_s for pid, sc in result.items()}
        floor = self._pedestrian_floor(result)
        proposed = job.candidates
        running_delay = scores.get(running.id)
        usable = [c for c in proposed if c.program.id != running.id]
        ranked = sorted(
            (c for c in usable if _finite(scores.get(c.program.id))),
            key=lambda c: (scores[c.program.id], c.program.id),
        )
        records = {
            c.program.id: CandidateRecord(
                c.program.id, c.label, _float_or_none(c.analytic_delay_s),
                scores.get(c.program.id),
                pedestrian_delay_s=_pedestrian_delay(result.get(c.program.id)),
            )
            for c in usable
        }
        chosen: SignalProgram | None = None
        reason = "no candidate proposed" if not usable else "no candidate scored"
        if not _finite(running_delay):
            reason = "running program has no score"
            ranked = []
        # A running plan that may not be renewed gives way to the best candidate that
        # passes the gate, whatever the margin (or, without one, to the fallback).
        retire = job.retire if adaptive_plan else None
        if adaptive_plan and retire is None:
            retire = floor.breach(running.id, result)
        for cand in ranked:
            assert running_delay is not None
            delay = scores[cand.program.id]
            gain = running_delay - delay
            below = floor.breach(cand.program.id, result)
            if below is not None:
                self.stats.pedestrian_floor_refusals += 1
                records[cand.program.id] = replace(records[cand.program.id], refused=below)
                reason = f"{cand.program.id} refused: {below}"
                continue
            if retire is None and (
                delay > running_delay * (1.0 - cfg.margin) or gain < cfg.min_gain_s
            ):
                reason = (
                    f"best candidate {cand.program.id} {delay:.1f} s vs running "
                    f"{running_delay:.1f} s: within the {cfg.margin:.0%} margin"
                )
                break
            violations = self._gate(cand.program, running)
            records[cand.program.id] = replace(
                records[cand.program.id], violations=tuple(v.message for v in violations))
            if violations:
                for rule in sorted({v.rule for v in violations}):
                    self.stats.rejected_by_rule[rule] += 1
                reason = f"{cand.program.id} refused by the safety gate"
                continue
            chosen = cand.program
            reason = (
                f"{cand.program.id} ({cand.label}) {delay:.1f} s replaces running "
                f"{running_delay:.1f} s: {retire}" if retire is not None else
                f"{cand.program.id} ({cand.label}) {delay:.1f} s beats running "
                f"{running_delay:.1f} s by {gain / running_delay:.1%}"
            )
            break
        t6 = clock()
        latency = replace(job.latency, evaluate_s=t5 - job.evaluating_since,
                          validate_s=t6 - t5, total_s=t6 - t0)
        cand_records = tuple(records[c.program.id] for c in usable)
        if chosen is not None:
            cmd = self._command(chosen, now)
            self._last_push_seq = cmd.seq
            self._remember(chosen)
            self.stats.plans_pushed += 1
            record(Outcome.PUSHED, reason, running_delay=running_delay,
                   candidates=cand_records, chosen=chosen.id, latency=latency)
            return [cmd]
        if retire is not None:
            # Not renewed: the lease lapses and the hardware returns to its fallback.
            record(Outcome.KEPT, f"running program not renewed: {retire}; {reason}",
                   running_delay=running_delay, candidates=cand_records, latency=latency)
            return []
        if adaptive_plan:
            self.stats.renewals += 1
            record(Outcome.KEPT, reason, running_delay=running_delay, candidates=cand_records,
                   chosen=running.id, renewed=True, latency=latency)
            return [self._command(running, now)]
        record(Outcome.KEPT, reason, running_delay=running_delay, candidates=cand_records,
               latency=latency)
        return []

    def _pedestrian_floor(self, result: Mapping[str, ProgramScore]) -> PedestrianFloor:
        slack = self.config.pedestrian_slack_s
        ref = result.get(self.fallback.id)
        if slack is None or ref is None:
            return PedestrianFloor(None, 0.0)
        return PedestrianFloor(ref.pedestrian_delay_s, slack)

    def _gate(self, program: SignalProgram, running: SignalProgram) -> tuple[Violation, ...]:
        """The safety gate: the program, the switch to it, and the switch back to the fallback.

        The hardware returns to its fallback on its own whenever the lease lapses,
        so that switch must be safe too (it checks it before accepting).
        """
        limits = self.config.limits
        own = validate(self.junction, program, previous=running, limits=limits)
        back = validate_switch(self.junction, program, self.fallback, limits)
        return own + back

    def _command(self, program: SignalProgram, now: float) -> PlanCommand:
        self._seq += 1
        lease = self.config.lease_cycles * program.cycle_s
        return PlanCommand(program=program, issued=now, valid_from=now, lease_s=lease,
                           seq=self._seq)

    def _remember(self, program: SignalProgram) -> None:
        self._programs[program.id] = program
        while len(self._programs) > self.config.remembered_programs:
            oldest = next(k for k in self._programs if k != self.fallback.id)
            # Never forget what the hardware runs now; it may still need renewals.
            if self._state is not None and oldest == self._state.program_id:
                self._programs[oldest] = self._programs.pop(oldest)
                continue
            del self._programs[oldest]

    def adopt(self, programs: Iterable[SignalProgram]) -> Adoption:
        """Remember programs a predecessor pushed, so the program the hardware runs is known.

        For a restarted service (``controller.service.app`` keeps the last pushed
        programs in its state directory): the hardware may still run the plan the
        previous process pushed.  Once remembered, the next epoch treats it as any
        running program: scores it, then renews it or replaces it, instead of
        failing with "unknown to this service" until the lease lapses.

        Give the programs oldest first; when there are more than
        ``config.remembered_programs`` allows, the newest stay.  Renewals push a
        remembered program again, so each must pass the checks the safety gate
        applies to a pushed program (with the configured limits): ``validate``
        (V1-V6) and the switch back to the fallback (D4).  A program that fails
        them, that reuses the fallback's id, or whose id is already known (the
        core's own pushes win) is refused and not remembered.  Call it before the
        first ``advance``, or on the thread that drives the core.
        """
        limits = self.config.limits
        adopted: list[SignalProgram] = []
        refused: list[tuple[str, str]] = []
        for program in programs:
            if program.id == self.fallback.id:
                refused.append((program.id, "uses the fallback program's id"))
                continue
            if program.id in self._programs:
                refused.append((program.id, "a program with this id is already known"))
                continue
            violations = validate(self.junction, program, limits=limits) + validate_switch(
                self.junction, program, self.fallback, limits)
            if violations:
                more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
                refused.append((program.id, f"fails the safety validator: "
                                            f"{violations[0].message}{more}"))
                continue
            self._remember(program)
            adopted.append(program)
        # More than the core remembers: the oldest given were forgotten again.
        kept = tuple(p for p in adopted if self._programs.get(p.id) is p)
        return Adoption(kept, tuple(refused))

    # -- queries -----------------------------------------------------------------
    def knows(self, program_id: str) -> bool:
        """Whether a program with this id is remembered (the fallback, pushed or adopted)."""
        return program_id in self._programs

    @property
    def last_decision(self) -> Decision | None:
        return self.decisions[-1] if self.decisions else None

    @property
    def adaptive_allowed(self) -> bool:
        """Whether the last epoch allowed adaptive control."""
        return self._adaptive_allowed


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _pedestrian_delay(score: ProgramScore | None) -> float | None:
    return None if score is None else score.pedestrian_delay_s


def _float_or_none(x: object) -> float | None:
    return float(x) if isinstance(x, int | float) and math.isfinite(x) else None


# -- analytic stand-ins (tests, benchmarks, and a twin-less fallback) ---------------


@dataclass(frozen=True, slots=True)
class AnalyticCandidate:
    program: SignalProgram
    label: str
    analytic_delay_s: float


@dataclass(frozen=True, slots=True)
class AnalyticScore:
    program_id: str
    person_delay_s: float
    pedestrian_delay_s: float | None = None


class EstimateSnapshots:
    """A snapshot source whose snapshot is the estimate itself (for ``AnalyticEvaluator``)."""

    def observe(self, reading: DetectorReading) -> None:
        return None

    def observe_state(self, state: HardwareState) -> None:
        return None

    def snapshot(
        self, now: float, estimate: Estimate, running: SignalProgram, cycle_second: int
    ) -> Estimate:
        return estimate


def analytic_delay_s(junction: JunctionSignals, estimate: Estimate, program: SignalProgram,
                     *, pedestrian_weight: float = 0.1) -> float:
    """Flow-weighted HCM delay per vehicle of ``program`` under ``estimate``.

    Pedestrian groups add their uniform delay with a small weight, so a
    program that starves crossings is not free.  A movement without capacity
    counts as a large delay rather than infinity (candidates stay comparable).
    """
    greens = stage_green_times(program)
    total = weight = 0.0
    for g in junction.groups:
        share = greens.get(g.id, 0) / program.cycle_s
        if not g.is_vehicular:
            uniform = 0.5 * program.cycle_s * (1.0 - share) ** 2
            total += pedestrian_weight * uniform
            weight += pedestrian_weight
            continue
        est = estimate.groups.get(g.id)
        if est is None or est.flow_veh_h <= 0:
            continue
        d = hcm_delay_s(est.flow_veh_h, est.saturation_veh_h, share, program.cycle_s)
        total += est.flow_veh_h * min(d if d is not None else 600.0, 600.0)
        weight += est.flow_veh_h
    return total / weight if weight > 0 else 0.0


class AnalyticEvaluator:
    """Scores programs with the HCM delay formula on the estimate (no simulation).

    Deterministic and fast: the evaluator of unit tests and of
    ``bench/decision.py``'s baseline row, behind the same protocol as the twin.
    """

    def __init__(self, junction: JunctionSignals) -> None:
        self.junction = junction

    def evaluate(self, snapshot: Any, programs: Sequence[SignalProgram]) -> list[AnalyticScore]:
        if not isinstance(snapshot, Estimate):
            raise TypeError("AnalyticEvaluator needs an Estimate snapshot (EstimateSnapshots)")
        return [
            AnalyticScore(p.id, analytic_delay_s(self.junction, snapshot, p)) for p in programs
        ]


def webster_proposer(
    junction: JunctionSignals,
    estimate: Estimate,
    running: SignalProgram,
    fallback: SignalProgram,
    *,
    program_prefix: str,
    cycle_steps_s: Sequence[int] = (-20, -10, 0, 10, 20),
) -> list[AnalyticCandidate]:
    """Webster splits for the estimated flows at a few cycles around Webster's optimum.

    A small, dependable proposer for tests and as a stand-in for the optimiser;
    it keeps the fallback's stage sequence.
    """
    plan = fallback.stage_plan or running.stage_plan
    sequence = plan.sequence if plan is not None else tuple(s.id for s in junction.stages)
    ratios = {
        g: (e.flow_veh_h / e.saturation_veh_h if e.saturation_veh_h > 0 else 0.0)
        for g, e in estimate.groups.items()
    }
    base = webster_plan(junction, sequence, ratios)
    out: list[AnalyticCandidate] = []
    seen: set[int] = set()
    for step in cycle_steps_s:
        c = base.cycle_s + step
        try:
            res = webster_plan(junction, sequence, ratios, min_cycle_s=c, max_cycle_s=c)
            program = compile_plan(junction, res.plan, f"{program_prefix}w{len(out)}")
        except ValueError:
            continue
        if program.cycle_s in seen or program.cycle_s > junction.max_cycle_s:
            continue
        seen.add(program.cycle_s)
        out.append(AnalyticCandidate(program, f"webster C={program.cycle_s}",
                                     analytic_delay_s(junction, estimate, program)))
    return out
