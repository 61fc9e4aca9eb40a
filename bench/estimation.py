"""Estimation accuracy: the detector-only estimator against ground truth, per signal group.

Runs one scenario with the adaptive controller (or, with ``--listen``, with the
fixed-time plan while the adaptive core only listens).  Every ``--every-s``
seconds after the warm-up it asks two perceptions for an estimate of the same
moment: the production one (``perception_for``: detector messages only) and
the oracle's ``TruthPerception`` (the field simulation read directly, same
smoothing kernel).  Prints per signal group the mean estimated and true arrival
flow (veh/h), the mean estimated and true queue (vehicles), their ratio, the
saturation flow each perception works with (veh/h of green), and how often the
estimator flagged spillback.  The twin is fed from the estimate, so a
group whose flow or queue is underestimated here is served too little by the
plans the twin prefers.

    .venv/bin/python bench/estimation.py asymmetric_turning [--seed 1] [--listen] \\
        [--every-s 30] [--out /tmp/atsc-bench-estimation]

Reads only; asserts nothing.  The numbers do not depend on machine load.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from controller.adaptive import AnalyticEvaluator, EstimateSnapshots
from controller.estimator import Estimate
from controller.messages import DetectorReading
from controller.signals import GroupKind
from sim import drivers
from sim.adaptive_driver import AdaptiveDriver, Parts, TruthPerception
from sim.drivers import DriverContext
from sim.runner import case_from_scenario, run_one


@dataclass
class Samples:
    est_flow: list[float] = field(default_factory=list)
    true_flow: list[float] = field(default_factory=list)
    est_queue: list[float] = field(default_factory=list)
    true_queue: list[float] = field(default_factory=list)
    est_saturation: list[float] = field(default_factory=list)
    true_saturation: list[float] = field(default_factory=list)
    spillback: int = 0


class ProbeDriver(AdaptiveDriver):
    """The adaptive driver, plus a ground-truth perception read side by side (never used)."""

    warmup_s = 900.0
    every_s = 30.0

    def __init__(self, ctx: DriverContext, *, parts: Parts | None = None) -> None:
        super().__init__(ctx, parts=parts)
        self.truth = TruthPerception(ctx.model, EstimateSnapshots())
        self.samples: dict[str, Samples] = {}
        self._next = self.warmup_s

    def observe_truth(self, sumo: ModuleType, now: float) -> None:
        self.truth.observe_truth(sumo, now)

    def step(self, now: float, readings: Sequence[DetectorReading]) -> Mapping[str, str]:
        states = super().step(now, readings)
        if now >= self._next:
            self._next = now + self.every_s
            running = self.hardware.running
            self._sample(self.core.perception.estimate(now, running),
                         self.truth.estimate(now, running))
        return states

    def _sample(self, est: Estimate, truth: Estimate) -> None:
        for g in self.model.signals.groups:
            if g.kind is GroupKind.PEDESTRIAN or g.id not in est.groups:
                continue
            e, t = est.groups[g.id], truth.groups[g.id]
            s = self.samples.setdefault(g.id, Samples())
            s.est_flow.append(e.flow_veh_h)
            s.true_flow.append(t.flow_veh_h)
            s.est_queue.append(e.queue_veh)
            s.true_queue.append(t.queue_veh)
            s.est_saturation.append(e.saturation_veh_h)
            s.true_saturation.append(t.saturation_veh_h)
            s.spillback += int(e.spillback)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:5.2f}" if b > 1e-9 else "    -"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scenario")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--listen", action="store_true",
                    help="fixed-time plan; the core estimates but proposes nothing")
    ap.add_argument("--every-s", type=float, default=30.0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/atsc-bench-estimation"))
    args = ap.parse_args(argv)

    case = case_from_scenario(args.scenario)
    seen: dict[str, ProbeDriver] = {}

    def factory(ctx: DriverContext) -> ProbeDriver:
        parts = None
        if args.listen:
            parts = Parts(lambda *a, **k: [], AnalyticEvaluator(ctx.model.signals),
                          EstimateSnapshots(), label="listener")
        drv = ProbeDriver(ctx, parts=parts)
        drv.warmup_s, drv.every_s = float(case.warmup_s), args.every_s
        seen["d"] = drv
        return drv

    drivers.register_driver("bench-estimation-probe", factory)
    run_one(case, "bench-estimation-probe", args.seed, args.out, progress=False)
    d = seen["d"]
    mode = "fixed-time (listening)" if args.listen else "adaptive"
    print(f"{args.scenario} seed {args.seed}, {mode}; means over "
          f"{len(next(iter(d.samples.values())).est_flow)} samples after the warm-up")
    head = (f"{'group':6} {'turn':16} {'flow est':>9} {'flow true':>9} {'ratio':>5} "
            f"{'queue est':>9} {'queue true':>10} {'ratio':>5} {'sat est':>7} {'sat true':>8} "
            f"{'spillback':>9}")
    print(head)
    print("-" * len(head))
    labels = {g.id: g.label for g in d.model.signals.groups}
    for gid, s in d.samples.items():
        ef, tf = statistics.fmean(s.est_flow), statistics.fmean(s.true_flow)
        eq, tq = statistics.fmean(s.est_queue), statistics.fmean(s.true_queue)
        print(f"{gid:6} {labels[gid][:16]:16} {ef:9.0f} {tf:9.0f} {_ratio(ef, tf)} "
              f"{eq:9.1f} {tq:10.1f} {_ratio(eq, tq)} "
              f"{statistics.fmean(s.est_saturation):7.0f} "
              f"{statistics.fmean(s.true_saturation):8.0f} "
              f"{s.spillback / len(s.est_flow):9.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
