"""AdaptiveCore without SUMO: epochs, leases, the safety gate, health gating, replay.

The loop here is the product's own: the simulated hardware
(``sim.hardware.SignalController``, pure Python with its independent checks)
and the core linked by an ``InProcessTransport``.  Traffic comes from a small
point-queue model of the toy junction that produces detector readings; the
evaluator is the analytic HCM one, the proposer the project's optimiser.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from typing import Any

import numpy as np
import pytest
from _toy_junction import toy_junction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.adaptive import (
    AdaptiveConfig,
    AdaptiveCore,
    AnalyticCandidate,
    AnalyticEvaluator,
    AnalyticScore,
    DetectorPerception,
    EstimateSnapshots,
    EvaluationJob,
    Outcome,
    ProgramScore,
    Proposer,
    RunningCheck,
    analytic_delay_s,
    scores_by_program,
    webster_proposer,
)
from controller.estimator import Estimate
from controller.messages import (
    AckStatus,
    DetectorInfo,
    DetectorKind,
    DetectorReading,
    PlanCommand,
)
from controller.optimiser import propose
from controller.plans import SignalProgram, StagePlan, compile_plan
from controller.safety import validate, validate_switch
from controller.signals import JunctionSignals
from controller.transport import (
    InProcessTransport,
    Journal,
    Received,
    Scored,
    Ticked,
    advance,
    complete,
    deliver,
    exchange,
    replay,
)
from sim.hardware import SignalController

JUNCTION = toy_junction()
SEQUENCE = ("P1", "P2", "P3", "P4")
#: Arrival rates (veh/s) of the toy junction's vehicle groups: an unbalanced peak, so
#: the fallback's equal split is clearly worse than what the estimate supports.
RATES = {"K1": 0.15, "K2": 0.03, "K3": 0.06, "K4": 0.02}


def detectors() -> tuple[DetectorInfo, ...]:
    out: list[DetectorInfo] = []
    for g in RATES:
        out += [
            DetectorInfo(f"{g}_up", DetectorKind.UPSTREAM, JUNCTION.group(g).approach,
                         (f"{g}_0",), (g,), 120.0),
            DetectorInfo(f"{g}_sl", DetectorKind.STOP_LINE, JUNCTION.group(g).approach,
                         (f"{g}_0",), (g,), 0.0),
            DetectorInfo(f"{g}_q", DetectorKind.QUEUE, JUNCTION.group(g).approach,
                         (f"{g}_0",), (g,), 0.0),
        ]
    out += [DetectorInfo(f"{g}_pb", DetectorKind.PUSH_BUTTON, "N", (), (g,)) for g in ("F1", "F2")]
    return tuple(out)


DETECTORS = detectors()


def fallback_program() -> SignalProgram:
    return compile_plan(JUNCTION, StagePlan(SEQUENCE, (14, 6, 14, 6)), "fallback")


@dataclass
class ToyField:
    """Point queues per vehicle group: Poisson arrivals, discharge of 0.5 veh/s while green."""

    seed: int = 1
    silenced: set[str] = field(default_factory=set)
    queue: dict[str, float] = field(default_factory=lambda: dict.fromkeys(RATES, 0.0))
    seq: int = 0
    delay_veh_s: float = 0.0

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def readings(self, now: float, shown: Mapping[str, str]) -> list[DetectorReading]:
        self.seq += 1
        out: list[DetectorReading] = []
        for g, rate in RATES.items():
            arrived = int(self.rng.poisson(rate))
            self.queue[g] += arrived
            served = 0
            if shown.get(g) == "G" and self.queue[g] >= 1 and self.rng.random() < 0.5:
                served = 1
                self.queue[g] -= 1
            self.delay_veh_s += self.queue[g]
            q = self.queue[g]
            out += [
                DetectorReading(f"{g}_up", now, self.seq, arrived, 0.2 * arrived,
                                presence=arrived > 0),
                DetectorReading(f"{g}_sl", now, self.seq, served, 0.5 if q or served else 0.0,
                                presence=q > 0),
                DetectorReading(f"{g}_q", now, self.seq, int(q), min(0.9, 0.05 * q),
                                queue_m=7.0 * q),
            ]
        for g in ("F1", "F2"):
            pressed = shown.get(g) != "G" and self.seq % 40 < 3
            out.append(DetectorReading(f"{g}_pb", now, self.seq, int(pressed),
                                       presence=pressed, pressed=pressed))
        return [r for r in out if r.detector_id not in self.silenced]


def make_core(
    *,
    proposer: Proposer = propose,
    evaluator: Any = None,
    config: AdaptiveConfig | None = None,
    running_check: RunningCheck | None = None,
) -> AdaptiveCore:
    return AdaptiveCore(
        JUNCTION,
        fallback_program(),
        perception=DetectorPerception(JUNCTION, DETECTORS, EstimateSnapshots(),
                                      turns={"K2": "left", "K4": "left"}),
        proposer=proposer,
        evaluator=evaluator if evaluator is not None else AnalyticEvaluator(JUNCTION),
        config=config,
        running_check=running_check,
    )


@dataclass
class Loop:
    """Hardware + transport + core, stepped one second at a time like ``AdaptiveDriver``."""

    core: AdaptiveCore
    traffic: ToyField = field(default_factory=ToyField)
    journal: Journal | None = None
    t: float = 0.0
    commands: list[tuple[float, PlanCommand]] = field(default_factory=list)
    programs: list[tuple[float, str, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.hardware = SignalController(JUNCTION, self.core.fallback)
        self.transport = InProcessTransport()
        self.shown: Mapping[str, str] = {}

    def run(self, seconds: int, each: Callable[[Loop], None] | None = None) -> None:
        for _ in range(seconds):
            self.t += 1.0
            now = self.t
            if each is not None:
                each(self)
            self.transport.deliver(self.traffic.readings(now, self.shown))
            self.shown = self.hardware.tick(now)
            state = self.hardware.state(now)
            self.programs.append((now, state.program_id, state.fallback))
            self.transport.deliver([state])
            exchange(self.core, self.transport, now, journal=self.journal)
            cmds = self.transport.take_commands()
            self.commands += [(now, c) for c in cmds]
            if cmds:
                self.transport.deliver([self.hardware.submit(c, now) for c in cmds])
                exchange(self.core, self.transport, now, tick=False, journal=self.journal)


# -- epochs and leases -------------------------------------------------------------------


def test_one_epoch_per_cycle_before_the_switch_point_and_every_plan_runs() -> None:
    loop = Loop(make_core())
    loop.run(600)
    core, hw = loop.core, loop.hardware
    decisions = list(core.decisions)
    assert len(decisions) >= 6
    # Every epoch prepares a different switch point, within the lead before it.
    switch_points = [d.switch_at for d in decisions]
    assert len(set(switch_points)) == len(switch_points)
    for d in decisions:
        assert 0 < d.switch_at - d.ts <= core.config.decision_lead_s
    # The unbalanced demand makes the optimiser's plan beat the equal split.
    assert core.stats.plans_pushed >= 1
    assert hw.stats.plans_accepted == core.stats.plans_pushed
    assert hw.stats.plans_rejected == 0
    assert hw.stats.monitor_faults == []
    # Once adaptive, the hardware never fell back: renewals kept the lease alive.
    first_adaptive = next(t for t, _pid, fb in loop.programs if not fb)
    assert all(not fb for t, _pid, fb in loop.programs if t >= first_adaptive)
    assert hw.stats.fallbacks == 0


def test_renewals_repeat_the_running_program_with_a_new_seq_and_a_lease_of_its_cycles() -> None:
    loop = Loop(make_core(config=AdaptiveConfig(margin=0.5, min_gain_s=0.0)))
    # With a 50 % margin hardly anything is pushed; force one adaptive plan first.
    loop.core = make_core()
    loop.hardware = SignalController(JUNCTION, loop.core.fallback)
    loop.run(300)
    seqs = [c.seq for _, c in loop.commands]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    renewals = [d for d in loop.core.decisions if d.renewed]
    assert renewals, "an adaptive plan must be renewed every cycle it keeps running"
    by_seq = {c.seq: c for _, c in loop.commands}
    for t, cmd in loop.commands:
        assert cmd.issued == t and cmd.valid_from == t
        assert cmd.lease_s == pytest.approx(2.5 * cmd.program.cycle_s)
    renewed_ids = {d.chosen for d in renewals}
    assert renewed_ids <= {c.program.id for c in by_seq.values()}
    assert loop.hardware.stats.lease_renewals == loop.core.stats.renewals


def test_within_margin_nothing_is_pushed_and_the_fallback_is_not_renewed() -> None:
    # A proposer that offers only the running program's twin: no gain, no push.
    def same_as_running(
        junction: JunctionSignals, estimate: Estimate, running: SignalProgram,
        fallback: SignalProgram, *, program_prefix: str,
    ) -> list[AnalyticCandidate]:
        assert running.stage_plan is not None
        copy = compile_plan(junction, running.stage_plan, f"{program_prefix}-copy")
        return [AnalyticCandidate(copy, "copy", analytic_delay_s(junction, estimate, copy))]

    loop = Loop(make_core(proposer=same_as_running))
    loop.run(300)
    assert loop.commands == []
    kept = [d for d in loop.core.decisions if d.outcome is Outcome.KEPT]
    assert kept and all("margin" in d.reason for d in kept)
    assert all(fb for _t, _pid, fb in loop.programs)


def test_a_retired_running_plan_gives_way_whatever_the_margin() -> None:
    # The capacity rule (optimiser.capacity_check) may forbid renewing the running plan;
    # here a check that retires every adaptive plan.  A 30 % margin keeps the first
    # adaptive plan running for good without it.
    checked: list[str] = []

    def retire_all(
        junction: JunctionSignals, estimate: Estimate, running: SignalProgram,
        fallback: SignalProgram,
    ) -> str:
        checked.append(running.id)
        return "over capacity (K4 x = 1.20)"

    config = AdaptiveConfig(margin=0.3)
    free = Loop(make_core(config=config))
    free.run(900)
    assert free.core.stats.renewals > 0
    loop = Loop(make_core(config=config, running_check=retire_all))
    loop.run(900)
    core = loop.core
    assert core.stats.renewals == 0
    # Never asked while the fallback runs: the fallback is never retired.
    assert checked and fallback_program().id not in checked
    replaced = [d for d in core.decisions if d.outcome is Outcome.PUSHED and d.running_id
                != fallback_program().id]
    assert replaced and all("replaces running" in d.reason and "K4 x = 1.20" in d.reason
                            for d in replaced)
    # Every adaptive plan either gave way to another candidate or lapsed to the fallback.
    assert len(replaced) + sum(
        1 for d in core.decisions if "not renewed" in d.reason) == len(checked)


# -- the pedestrian floor ----------------------------------------------------------------


@dataclass
class PedestrianCost:
    """The analytic evaluator plus a predicted pedestrian delay per program.

    The fallback's pedestrians wait 20 s; every other program's wait ``other_s``
    (changeable while the loop runs), whatever its vehicle delay.
    """

    other_s: float
    inner: AnalyticEvaluator = field(default_factory=lambda: AnalyticEvaluator(JUNCTION))

    def evaluate(self, snapshot: Any, programs: Sequence[SignalProgram]) -> list[AnalyticScore]:
        return [
            replace(s, pedestrian_delay_s=20.0 if s.program_id == "fallback" else self.other_s)
            for s in self.inner.evaluate(snapshot, programs)
        ]


def test_no_plan_is_pushed_whose_pedestrians_wait_longer_than_the_slack_allows() -> None:
    # 2 s more than the fallback: allowed with a 3 s slack, refused with 1 s.
    allowed = Loop(make_core(evaluator=PedestrianCost(22.0),
                             config=AdaptiveConfig(pedestrian_slack_s=3.0)))
    allowed.run(400)
    assert allowed.core.stats.plans_pushed >= 1
    assert allowed.core.stats.pedestrian_floor_refusals == 0
    floor = Loop(make_core(evaluator=PedestrianCost(22.0),
                           config=AdaptiveConfig(pedestrian_slack_s=1.0)))
    floor.run(400)
    core = floor.core
    assert floor.commands == [] and all(fb for _t, _pid, fb in floor.programs)
    refused = [c for d in core.decisions for c in d.candidates if c.refused]
    assert refused and core.stats.pedestrian_floor_refusals == len(refused)
    assert all(c.refused == "predicted pedestrian delay 22.0 s exceeds the fallback's "
               "20.0 s + 1 s" and c.violations is None for c in refused)
    # Without a floor the same plans go out.
    free = Loop(make_core(evaluator=PedestrianCost(22.0),
                          config=AdaptiveConfig(pedestrian_slack_s=None)))
    free.run(400)
    assert free.core.stats.plans_pushed == allowed.core.stats.plans_pushed


def test_a_running_plan_below_the_pedestrian_floor_is_not_renewed() -> None:
    cost = PedestrianCost(20.0)
    loop = Loop(make_core(evaluator=cost, config=AdaptiveConfig(pedestrian_slack_s=1.0)))
    loop.run(300)
    assert loop.core.stats.plans_pushed >= 1 and loop.core.stats.renewals >= 1
    assert not loop.programs[-1][2], "an adaptive plan runs"
    cost.other_s = 30.0  # e.g. the estimated pedestrian flow rose
    loop.run(300)
    late = [d for d in loop.core.decisions if d.ts > 300 and d.running_id != "fallback"]
    assert late and all(not d.renewed and "pedestrian delay 30.0 s" in d.reason for d in late)
    # It gave way to the only plan above the floor (pushed, or the lease lapsed).
    assert loop.programs[-1][1:] == ("fallback", True)


# -- the safety gate ---------------------------------------------------------------------


def all_green(program_id: str) -> SignalProgram:
    """Every group green for most of the cycle: the analytic delay loves it, V1 forbids it."""
    return SignalProgram(program_id, 60, 0, {g: ((0, 55),) for g in JUNCTION.group_ids})


def short_greens(program_id: str) -> SignalProgram:
    """The optimiser's shape with 2 s stage greens: below every minimum green (V4)."""
    return compile_plan(JUNCTION, StagePlan(SEQUENCE, (2, 2, 2, 2)), program_id)


def test_a_plan_that_fails_the_gate_is_never_pushed_and_rejections_are_counted() -> None:
    def reckless(
        junction: JunctionSignals, estimate: Estimate, running: SignalProgram,
        fallback: SignalProgram, *, program_prefix: str,
    ) -> list[Any]:
        good = propose(junction, estimate, running, fallback, program_prefix=program_prefix)
        bad = [all_green(f"{program_prefix}-bad1"), short_greens(f"{program_prefix}-bad2")]
        return [*(AnalyticCandidate(p, "bad", 0.0) for p in bad), *good]

    loop = Loop(make_core(proposer=reckless))
    loop.run(400)
    core = loop.core
    pushed_ids = {c.program.id for _, c in loop.commands}
    assert not any(pid.endswith(("-bad1", "-bad2")) for pid in pushed_ids)
    assert core.stats.rejected_by_rule["V1"] >= 1
    assert sum(core.stats.rejected_by_rule.values()) >= 2
    refused = [c for d in core.decisions for c in d.candidates if c.violations]
    assert {c.program_id.rsplit("-", 1)[1] for c in refused} >= {"bad1"}
    # The gate did not stop good plans: a valid candidate went out and ran.
    assert core.stats.plans_pushed >= 1
    assert loop.hardware.stats.plans_rejected == 0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(
    st.tuples(st.integers(30, 130), st.lists(st.tuples(st.integers(0, 129), st.integers(1, 80)),
                                             min_size=6, max_size=6)),
    min_size=1, max_size=4,
))
def test_property_every_pushed_program_passes_the_gate(
    shapes: list[tuple[int, list[tuple[int, int]]]],
) -> None:
    """Arbitrary programs (mostly unsafe) offered as candidates: whatever leaves passes V1-V6/D4."""
    programs = []
    for k, (cycle, ivs) in enumerate(shapes):
        greens = {
            g: (((s % cycle), (s % cycle) + min(length, cycle - 1)),)
            for g, (s, length) in zip(JUNCTION.group_ids, ivs, strict=True)
        }
        programs.append(SignalProgram(f"rand{k}", cycle, 0, greens))

    def random_plans(
        junction: JunctionSignals, estimate: Estimate, running: SignalProgram,
        fallback: SignalProgram, *, program_prefix: str,
    ) -> list[AnalyticCandidate]:
        ours = [SignalProgram(f"{program_prefix}-{p.id}", p.cycle_s, 0, p.greens)
                for p in programs]
        ours += [c.program for c in webster_proposer(
            junction, estimate, running, fallback, program_prefix=program_prefix)]
        return [AnalyticCandidate(p, "random", 0.0) for p in ours]

    loop = Loop(make_core(proposer=random_plans))
    loop.run(150)
    assert loop.core.stats.decisions >= 1
    fallback = loop.core.fallback
    running = fallback
    for _, cmd in loop.commands:
        if cmd.program.id != running.id:
            assert validate(JUNCTION, cmd.program, previous=running) == ()
            assert validate_switch(JUNCTION, cmd.program, fallback) == ()
            running = cmd.program
    assert loop.hardware.stats.plans_rejected == 0
    assert loop.hardware.stats.monitor_faults == []


# -- health gating (D2) and failures -----------------------------------------------------


def test_too_many_faulty_detectors_push_nothing_and_the_lease_lapses_to_the_fallback() -> None:
    loop = Loop(make_core())
    loop.run(300)
    assert any(not fb for _t, _pid, fb in loop.programs[-5:]), "adaptive before the fault"
    n_before = len(loop.commands)
    handover_at = loop.t
    # The K1 loops and the radar all go silent: stale after 2 report periods (D2).
    loop.traffic.silenced |= {"K1_up", "K1_sl", "K1_q"}
    loop.run(300)
    core = loop.core
    after = [d for d in core.decisions if d.ts > handover_at + 3]
    assert after and all(d.outcome is Outcome.FALLBACK for d in after)
    assert all("K1" in d.reason for d in after)
    assert core.stats.handovers == 1
    # Nothing pushed once health forbade it (a command in the first seconds is allowed:
    # the detectors needed two report periods to count as stale).
    assert all(t <= handover_at + 3 for t, _ in loop.commands[n_before:])
    # The hardware returned by itself within the lease, and stayed there.
    back = next(t for t, _pid, fb in loop.programs if t > handover_at and fb)
    longest_lease = max(c.lease_s for _, c in loop.commands)
    assert back - handover_at <= longest_lease + 1
    assert all(fb for t, _pid, fb in loop.programs if t > back)
    assert loop.hardware.stats.fallbacks == 1
    assert loop.hardware.stats.monitor_faults == []


def test_a_few_faulty_detectors_within_limits_keep_adaptive_control() -> None:
    loop = Loop(make_core())
    loop.traffic.silenced |= {"K4_up"}
    loop.run(400)
    assert loop.core.stats.fallback_decisions <= 1  # start-up: detectors not yet healthy
    assert loop.core.stats.plans_pushed >= 1


def test_start_up_waits_for_healthy_detectors() -> None:
    """D5: no plan before the detectors have proven healthy; the hardware runs its own."""
    loop = Loop(make_core())
    loop.traffic.silenced |= {d.id for d in DETECTORS}
    loop.run(150)
    early = list(loop.core.decisions)
    assert early and all(d.outcome is Outcome.FALLBACK for d in early)
    assert all("faulty" in d.reason for d in early)
    assert loop.commands == []
    assert loop.core.stats.handovers == 0  # never adaptive, so nothing was handed over
    loop.traffic.silenced.clear()
    loop.run(300)
    assert loop.core.stats.plans_pushed >= 1
    # Ten consecutive plausible readings before a detector counts as healthy again.
    assert min(t for t, _ in loop.commands) > 150 + 10


class BrokenEvaluator:
    def evaluate(self, snapshot: Any, programs: Sequence[SignalProgram]) -> list[AnalyticScore]:
        raise RuntimeError("twin worker died")


def test_evaluator_failure_pushes_nothing() -> None:
    loop = Loop(make_core(evaluator=BrokenEvaluator()))
    loop.run(300)
    assert loop.commands == []
    failed = [d for d in loop.core.decisions if d.outcome is Outcome.FAILED]
    assert failed and "twin worker died" in failed[-1].reason
    assert loop.core.stats.failures == len(failed)


def test_a_plan_refused_by_the_hardware_is_followed_by_a_renewal() -> None:
    loop = Loop(make_core())
    loop.run(300)
    adaptive = loop.hardware.running
    assert adaptive is not loop.core.fallback
    # The hardware refuses whatever comes next (as a real one may, e.g. a full memory).
    real_submit = loop.hardware.submit

    def refuse(cmd: PlanCommand, now: float) -> Any:
        ack = real_submit(cmd, now)
        if cmd.program.id == loop.hardware.running.id:
            return ack
        return type(ack)(ack.program_id, ack.seq, AckStatus.REJECTED, "test refusal", now)

    loop.hardware.submit = refuse  # type: ignore[method-assign]
    n_before = len(loop.commands)
    loop.run(600)
    assert loop.core.stats.rejected_by_hardware >= 1
    assert loop.core.stats.hardware_reject_reasons[-1].endswith("test refusal")
    later = loop.commands[n_before:]
    for k, (t, cmd) in enumerate(later):
        if cmd.program.id != adaptive.id and k + 1 < len(later):
            t_next, nxt = later[k + 1]
            # The renewal follows at the next tick, not a cycle later.
            assert nxt.program.id == adaptive.id and t_next == t + 1
    # The refused plans never ran, and the adaptive plan never lapsed.
    assert {pid for t, pid, _fb in loop.programs if t > 300} == {adaptive.id}
    assert loop.hardware.stats.fallbacks == 0



def test_a_core_that_does_not_know_the_running_program_pushes_nothing_until_the_fallback() -> None:
    """A restart without the state file: the lease, not the service, ends the old plan."""
    loop = Loop(make_core())
    loop.run(300)
    adaptive = loop.hardware.running
    assert adaptive is not loop.core.fallback
    loop.core = make_core()
    n_before = len(loop.commands)
    loop.run(600)
    back = next(t for t, _pid, fb in loop.programs if t > 300 and fb)
    before_back = [d for d in loop.core.decisions if d.ts < back]
    failed = [d for d in before_back if d.outcome is Outcome.FAILED]
    assert failed, before_back
    for d in failed:
        assert d.running_id == adaptive.id and "unknown to this service" in d.reason
    # Every epoch before the fallback either waited for healthy detectors or failed.
    assert {d.outcome for d in before_back} <= {Outcome.FAILED, Outcome.FALLBACK}
    assert all(t > back for t, _ in loop.commands[n_before:])
    # Back on the known fallback, adaptive control resumes.
    assert loop.core.stats.plans_pushed >= 1
    assert loop.core.stats.failures == len([d for d in loop.core.decisions
                                            if d.outcome is Outcome.FAILED])


# -- replay: the core's only inputs are the messages ----------------------------------


def test_replaying_the_journal_into_a_fresh_core_gives_the_same_commands() -> None:
    journal = Journal()
    loop = Loop(make_core(), journal=journal)
    loop.run(500)
    issued = [c for _, c in loop.commands]
    assert journal.commands == issued and len(issued) >= 3
    again = replay(make_core(), journal)
    assert again == issued
    # A different input changes the output: the replay is not vacuous.
    cut = Journal(journal.entries[: len(journal.entries) // 2])
    assert replay(make_core(), cut) == issued[: len(replay(make_core(), cut))]
    assert len(replay(make_core(), cut)) < len(issued)


def test_config_rejects_nonsense() -> None:
    for bad in ({"margin": 1.0}, {"lease_cycles": 1.0}, {"decision_lead_s": 0},
                {"min_gain_s": -1.0}, {"pedestrian_slack_s": -0.5},
                {"pedestrian_slack_s": math.nan}):
        with pytest.raises(ValueError):
            AdaptiveConfig(**bad)


def test_analytic_delay_prefers_green_where_the_flow_is() -> None:
    loop = Loop(make_core())
    loop.run(200)
    est = loop.core.perception.estimate(loop.t, loop.core.fallback)
    tilted = compile_plan(JUNCTION, StagePlan(SEQUENCE, (22, 6, 10, 6)), "tilted")
    equal = loop.core.fallback
    assert analytic_delay_s(JUNCTION, est, tilted) < analytic_delay_s(JUNCTION, est, equal)
    assert math.isfinite(analytic_delay_s(JUNCTION, est, all_green("x")))


class NoEvaluator:
    """A core that must decide from the journal's recorded scores alone."""

    def evaluate(self, snapshot: Any, programs: Sequence[SignalProgram]) -> list[AnalyticScore]:
        raise AssertionError("the replay must use the recorded scores")


def test_the_journal_records_scores_so_a_replay_needs_no_evaluator() -> None:
    journal = Journal()
    loop = Loop(make_core(), journal=journal)
    loop.run(500)
    issued = [c for _, c in loop.commands]
    assert any(isinstance(e, Scored) and e.scores for e in journal.entries)
    assert replay(make_core(evaluator=NoEvaluator()), journal) == issued
    assert replay(make_core(), journal, rescore=True) == issued


# -- split decisions: the evaluation runs elsewhere, the core keeps ingesting ------------


def _score_in_worker(junction: JunctionSignals, snapshot: Any,
                     programs: Sequence[SignalProgram]) -> dict[str, ProgramScore]:
    """Worker-process entry: the job's snapshot and programs are all it gets."""
    return scores_by_program(AnalyticEvaluator(junction).evaluate(snapshot, programs))


@dataclass
class SplitLoop(Loop):
    """``Loop`` with split decisions: the job is scored in a worker process and completed
    ``delay(epoch)`` seconds later while detector readings keep arriving, as in the service."""

    delay: Callable[[int], float] = lambda epoch: 2.0
    in_flight: list[tuple[float, EvaluationJob, Future[dict[str, float]]]] = field(
        default_factory=list)
    #: (epoch in flight, readings handed to the core) per delivery while a job was pending.
    ingested_in_flight: list[tuple[int, int]] = field(default_factory=list)

    def run_split(self, seconds: int, pool: ProcessPoolExecutor) -> None:
        for _ in range(seconds):
            self.t += 1.0
            now = self.t
            self.transport.deliver(self.traffic.readings(now, self.shown))
            self.shown = self.hardware.tick(now)
            self.transport.deliver([self.hardware.state(now)])
            inbound = self.transport.receive()
            pending = self.core.pending
            deliver(self.core, inbound, now, self.journal)
            if pending is not None:
                n = sum(isinstance(m, DetectorReading) for m in inbound)
                self.ingested_in_flight.append((pending.epoch, n))
            cmds: list[PlanCommand] = []
            for item in [x for x in self.in_flight if x[0] <= now]:
                self.in_flight.remove(item)
                _, job, fut = item
                cmds += complete(self.core, job, fut.result(timeout=120), now, self.journal)
            step = advance(self.core, now, self.journal)
            cmds += step.commands
            if step.job is not None:
                job = step.job
                fut = pool.submit(_score_in_worker, JUNCTION, job.snapshot, list(job.programs))
                self.in_flight.append((now + self.delay(job.epoch), job, fut))
            self.commands += [(now, c) for c in cmds]
            if cmds:
                acks = [self.hardware.submit(c, now) for c in cmds]
                deliver(self.core, acks, now, self.journal)


def test_split_decisions_keep_ingesting_drop_stale_scores_and_replay_exactly() -> None:
    journal = Journal()
    # Most epochs get their scores 2 s later; every third only after its switch point.
    loop = SplitLoop(make_core(), journal=journal,
                     delay=lambda epoch: 40.0 if epoch % 3 == 0 else 2.0)
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        loop.run_split(900, pool)
    core = loop.core
    issued = [c for _, c in loop.commands]
    assert core.stats.plans_pushed >= 1 and core.stats.dropped >= 1
    outcomes = {d.outcome for d in core.decisions}
    assert {Outcome.PUSHED, Outcome.DROPPED} <= outcomes
    # Readings reached the core while evaluations were in flight, and no decision
    # came back in the second it started (the evaluation really was split off).
    assert sum(n for _, n in loop.ingested_in_flight) >= 10 * len(DETECTORS)
    started = {e.started: i for i, e in enumerate(journal.entries)
               if isinstance(e, Ticked) and e.started is not None}
    for i, e in enumerate(journal.entries):
        if isinstance(e, Scored):
            between = journal.entries[started[e.epoch] + 1:i]
            assert any(isinstance(b, Received) and any(isinstance(m, DetectorReading)
                                                       for m in b.messages) for b in between)
    # The journal reproduces every command: from the recorded scores without any
    # evaluator, and with the evaluator scoring each job's snapshot again.
    assert journal.commands == issued
    assert replay(make_core(evaluator=NoEvaluator()), journal) == issued
    assert replay(make_core(), journal, rescore=True) == issued
    # The scores are real inputs: with every evaluation failed instead, the replay
    # issues other commands (or diverges: the recorded hardware then runs programs
    # the replayed core never pushed).
    failed = Journal([replace(e, scores=None, failure="lost") if isinstance(e, Scored) else e
                      for e in journal.entries])
    try:
        again: list[PlanCommand] | None = replay(make_core(evaluator=NoEvaluator()), failed)
    except ValueError:
        again = None
    assert again != issued
