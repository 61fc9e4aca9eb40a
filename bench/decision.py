"""Decision latency and twin throughput of the adaptive controller.

A decision is: detector snapshot -> estimate -> optimiser candidates (>= 8)
-> twin scores of every candidate and the running program over the horizon
(>= 300 s) -> safety gate -> plan.  To time decisions on realistic inputs, a
scenario is first run with the fixed-time program while every detector
message and hardware state is recorded (a ``Journal``); the recorded messages
are then replayed into fresh adaptive cores with different evaluators, and
each core's decision epochs are timed (``Decision.latency``).  Because the
recorded hardware keeps its fallback program, every epoch decides against the
same running program, and every configuration sees the same inputs.

Prints one row per evaluator configuration: decisions, candidates per
decision, decision latency p50/p99 and its parts, and twin throughput
(simulated seconds per wall second, per twin process and in total).  Asserts
nothing; run it alone on the machine, the numbers are wall-clock.

    .venv/bin/python bench/decision.py [--scenario morning_peak] [--record-s 2400] \\
        [--horizon-s 300] [--workers 1 2] [--uncalibrated] [--out /tmp/atsc-bench-decision]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from controller.adaptive import (
    AdaptiveCore,
    AnalyticEvaluator,
    Decision,
    EstimateSnapshots,
    Evaluator,
    Score,
    SnapshotSource,
)
from controller.estimator import Estimate
from controller.optimiser import OptimiserConfig, capacity_check, propose
from controller.plans import SignalProgram
from controller.signals import JunctionSignals
from controller.transport import Journal, replay
from controller.twin import SnapshotBuilder, SumoTwin, TwinScore
from sim import drivers
from sim.adaptive_driver import AdaptiveDriver, Parts, perception_for
from sim.discharge import uncalibrated
from sim.drivers import DriverContext
from sim.junction import JunctionModel
from sim.runner import case_from_scenario, run_one
from sim.twin_config import twin_config_from_model


def _no_candidates(
    junction: JunctionSignals, estimate: Estimate, running: SignalProgram,
    fallback: SignalProgram, *, program_prefix: str,
) -> list[Any]:
    return []


@dataclass
class Recording:
    model: JunctionModel
    fallback: SignalProgram
    journal: Journal


def record(scenario: str, seconds: float, out: Path) -> Recording:
    """Messages of a fixed-time run (a core that never proposes anything listens in)."""
    journal = Journal()
    seen: dict[str, AdaptiveDriver] = {}

    def factory(ctx: DriverContext) -> AdaptiveDriver:
        parts = Parts(_no_candidates, AnalyticEvaluator(ctx.model.signals), EstimateSnapshots(),
                      label="listener")
        seen["driver"] = AdaptiveDriver(ctx, parts=parts, journal=journal)
        return seen["driver"]

    case = case_from_scenario(scenario)
    case = replace(case, end_s=min(case.end_s, case.begin_s + seconds),
                   warmup_s=min(case.warmup_s, seconds / 2))
    drivers.register_driver("bench-listener", factory)
    run_one(case, "bench-listener", 1, out, progress=False)
    d = seen["driver"]
    return Recording(d.model, d.core.fallback, journal)


@dataclass
class TimedEvaluator:
    """Wraps an evaluator; keeps wall time and the twin's own per-program numbers."""

    inner: Evaluator
    calls: list[float] = field(default_factory=list)
    programs: int = 0
    sim_s: float = 0.0
    worker_wall_s: float = 0.0

    def evaluate(self, snapshot: Any, programs: Sequence[SignalProgram]) -> Sequence[Score]:
        t0 = time.perf_counter()
        scores = self.inner.evaluate(snapshot, programs)
        self.calls.append(time.perf_counter() - t0)
        self.programs += len(programs)
        for s in scores:
            if isinstance(s, TwinScore):
                self.sim_s += s.sim_s
                self.worker_wall_s += s.wall_s
        return scores


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def run_config(rec: Recording, label: str, evaluator: Evaluator,
               snapshots: SnapshotSource) -> dict[str, Any]:
    timed = TimedEvaluator(evaluator)
    core = AdaptiveCore(
        rec.model.signals, rec.fallback,
        perception=perception_for(rec.model, snapshots),
        proposer=propose, evaluator=timed, timer=time.perf_counter,
        running_check=capacity_check,
    )
    decisions: list[Decision] = []
    last = 0
    # Replay entry by entry so every decision is collected, not only the last few hundred.
    # rescore: this core's evaluator scores every job again (the recording's scores
    # came from the listener).
    for entry in rec.journal.entries:
        replay(core, Journal([entry]), rescore=True)
        if core.stats.recorded != last and core.last_decision is not None:
            last = core.stats.recorded
            decisions.append(core.last_decision)
    timed_ones = [d for d in decisions if d.candidates]
    total = [d.latency.total_s for d in timed_ones]
    evaluate = [d.latency.evaluate_s for d in timed_ones]
    return {
        "label": label,
        "decisions": len(timed_ones),
        "candidates": statistics.fmean(len(d.candidates) for d in timed_ones)
        if timed_ones else 0.0,
        "min_candidates": min((len(d.candidates) for d in timed_ones), default=0),
        "p50_s": _pct(total, 50) if total else math.nan,
        "p99_s": _pct(total, 99) if total else math.nan,
        "evaluate_p50_s": _pct(evaluate, 50) if evaluate else math.nan,
        "rest_p50_s": _pct([t - e for t, e in zip(total, evaluate, strict=True)], 50)
        if total else math.nan,
        "sim_per_wall_per_process": timed.sim_s / timed.worker_wall_s
        if timed.worker_wall_s else math.nan,
        "sim_per_wall_total": timed.sim_s / sum(timed.calls) if timed.calls else math.nan,
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default="morning_peak")
    ap.add_argument("--record-s", type=float, default=2400.0,
                    help="seconds of the scenario to record (about one decision per cycle)")
    ap.add_argument("--horizon-s", type=int, default=300)
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2],
                    help="twin process counts to compare")
    ap.add_argument("--uncalibrated", action="store_true",
                    help="also time the twin with SUMO's default drivers (no start-up delay, "
                         "accel 2.6 m/s²), the twin before its drivers were calibrated")
    ap.add_argument("--out", type=Path, default=Path("/tmp/atsc-bench-decision"))
    args = ap.parse_args(argv)
    if args.horizon_s < 300:
        ap.error("evaluation.md asks for a horizon of at least 300 s")
    if OptimiserConfig().n_candidates < 8:
        ap.error("the optimiser must propose at least 8 candidates")

    t0 = time.perf_counter()
    rec = record(args.scenario, args.record_s, args.out)
    print(f"recorded {args.scenario}, {args.record_s:.0f} s in {time.perf_counter() - t0:.0f} s "
          f"wall ({len(rec.journal.entries)} journal entries)", flush=True)
    rows = [run_config(rec, "analytic (no twin)", AnalyticEvaluator(rec.model.signals),
                       EstimateSnapshots())]
    config = twin_config_from_model(rec.model, horizon_s=args.horizon_s)
    variants = [("", config)]
    if args.uncalibrated:
        variants.append((", default drivers", uncalibrated(config)))
    for n in args.workers:
        for suffix, cfg in variants:
            twin = SumoTwin(cfg, workers=n)
            try:
                # Start every worker before timing (the pool spawns them on demand): one
                # throwaway evaluation with a task for each.
                empty = SnapshotBuilder(cfg).snapshot(0.0, None, rec.fallback, 0)
                twin.evaluate(empty, [rec.fallback] * n)
                rows.append(run_config(rec, f"twin {args.horizon_s} s, {n} proc.{suffix}",
                                       twin, SnapshotBuilder(cfg)))
            finally:
                twin.close()

    print(f"\n{'evaluator':<40}{'decisions':>10}{'cand.':>7}{'min':>5}{'p50 s':>8}{'p99 s':>8}"
          f"{'twin p50 s':>12}{'rest p50 s':>12}{'sim-s/wall-s':>14}{'per process':>13}")
    for r in rows:
        total, per = r["sim_per_wall_total"], r["sim_per_wall_per_process"]
        twin_cols = (f"{total:>14.0f}{per:>13.0f}" if math.isfinite(per)
                     else f"{'-':>14}{'-':>13}")
        print(f"{r['label']:<40}{r['decisions']:>10}{r['candidates']:>7.1f}"
              f"{r['min_candidates']:>5}{r['p50_s']:>8.2f}"
              f"{r['p99_s']:>8.2f}{r['evaluate_p50_s']:>12.3f}{r['rest_p50_s']:>12.3f}"
              + twin_cols)
    print("\np50/p99: detector snapshot -> candidates -> twin -> validated plan, per decision;"
          "\nsim-s/wall-s: twin seconds simulated per wall second (all processes / one process);"
          "\ncand., min: candidates per decision besides the running program (mean, fewest).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
