"""Benchmark: SUMO twin decision latency on the Schlosskreuzung with a morning-peak snapshot.

Each evaluation scores 8 candidates plus the running program over the
horizon from a new snapshot (so the per-snapshot build is included), the way
the adaptive core calls the twin once per decision epoch.  The twin variants
run side by side: every snapshot is evaluated by each variant in turn, so a
burst of load from other processes hits all of them alike.

- ``detailed``: the reference twin (``twin_config_from_model(detailed=True)``):
  the junction's own network, every program simulated from the snapshot on,
  vehicles driving to the end of their exit edge.
- ``fast``: the default twin (docs/twin.md, "Performance").

Prints one row per variant and worker count: wall time per evaluation
(p50/p99) and twin throughput in simulated seconds per wall second per core,
plus the load average before and after.

    .venv/bin/python bench/twin.py [--reps 30] [--workers 2] [--variants detailed fast]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from contextlib import ExitStack

import numpy as np

from controller.messages import DetectorReading
from controller.plans import SignalProgram, StagePlan, compile_plan
from controller.signals import JunctionSignals
from controller.twin import SnapshotBuilder, SumoTwin, TwinConfig, TwinSnapshot
from sim.junction import load_junction
from sim.twin_config import twin_config_from_model

SEQ = ("P1", "P2", "P3", "P4")
#: Morning peak (scenarios/morning_peak.toml) per upstream loop, veh/h.
LOOP_FLOWS = {"N1_up": 380.0, "N2_up": 380.0, "S1_up": 320.0, "S2_up": 320.0,
              "W1_up": 500.0, "E1_up": 200.0}
#: Queues mid-cycle, metres per queue sensor.
QUEUES_M = {"N1_q": 40.0, "N2_q": 47.5, "N3_q": 10.0, "S1_q": 32.5, "S2_q": 40.0,
            "S3_q": 10.0, "W1_q": 47.5, "W2_q": 17.5, "E1_q": 17.5, "E2_q": 10.0}
CANDIDATES = 8


def morning_snapshot(
    cfg: TwinConfig, running: SignalProgram, now: float, cycle_second: int = 40
) -> TwinSnapshot:
    rng = np.random.default_rng(int(now))
    b = SnapshotBuilder(cfg)
    seq = 0
    for t in range(int(now) - 600, int(now)):
        for did, q in LOOP_FLOWS.items():
            seq += 1
            b.observe(DetectorReading(did, float(t), seq, count=int(rng.poisson(q / 3600.0))))
    for did, q in QUEUES_M.items():
        seq += 1
        b.observe(DetectorReading(did, now - 1.0, seq, queue_m=q))
    seq += 1
    b.observe(DetectorReading("N_bus", now - 4.0, seq, count=1))
    seq += 1
    b.observe(DetectorReading("W_pb", now - 20.0, seq, pressed=True, count=1))
    return b.snapshot(now, None, running, cycle_second)


def candidates(signals: JunctionSignals, running: SignalProgram) -> list[SignalProgram]:
    """The running program first, then ``CANDIDATES`` stage plans around it."""
    splits = [(35, 10, 22, 8), (40, 10, 20, 8), (30, 10, 25, 8), (45, 12, 20, 8),
              (28, 10, 18, 6), (50, 10, 25, 10), (33, 8, 28, 8), (38, 12, 15, 6)]
    progs = [compile_plan(signals, StagePlan(SEQ, g), f"c{k}") for k, g in enumerate(splits)]
    return [running, *progs[:CANDIDATES]]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=30, help="evaluations per variant")
    ap.add_argument("--workers", type=int, nargs="+", default=[2])
    ap.add_argument("--horizon", type=int, default=300)
    ap.add_argument("--variants", nargs="+", default=["detailed", "fast"],
                    choices=["detailed", "fast"])
    args = ap.parse_args()
    model = load_junction("schlosskreuzung")
    configs = {
        v: twin_config_from_model(model, horizon_s=args.horizon, detailed=v == "detailed")
        for v in args.variants
    }
    running = compile_plan(model.signals, StagePlan(SEQ, (35, 10, 22, 8)), "running")
    programs = candidates(model.signals, running)
    cfg0 = next(iter(configs.values()))
    # The cycle second varies, so the running cycle's rest (shared by all programs) does too.
    snaps = [
        morning_snapshot(cfg0, running, 3600.0 + 90.0 * k, (37 * k) % running.cycle_s)
        for k in range(args.reps + 1)
    ]
    load_before = os.getloadavg()
    rows: list[tuple[str, int, list[float]]] = []
    for w in args.workers:
        walls: dict[str, list[float]] = {v: [] for v in configs}
        with ExitStack() as stack:
            twins = {v: stack.enter_context(SumoTwin(c, workers=w)) for v, c in configs.items()}
            for twin in twins.values():
                twin.warm_up()
                twin.evaluate(snaps[0], programs)  # network load, first build, program tables
            for snap in snaps[1:]:
                for v, twin in twins.items():
                    t0 = time.perf_counter()
                    twin.evaluate(snap, programs)
                    walls[v].append(time.perf_counter() - t0)
        rows += [(v, w, walls[v]) for v in configs]
    load_after = os.getloadavg()
    print(f"{'variant':>8} {'workers':>7} {'programs':>8} {'horizon_s':>9} {'p50_s':>7} "
          f"{'p99_s':>7} {'sim_s/wall_s/core':>17}")
    for v, w, times in rows:
        rate = len(programs) * args.horizon / (statistics.mean(times) * w)
        print(f"{v:>8} {w:>7} {len(programs):>8} {args.horizon:>9} "
              f"{statistics.median(times):>7.3f} {_pct(times, 0.99):>7.3f} {rate:>17.0f}")
    print(f"load average (1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/"
          f"{load_before[2]:.2f}, after {load_after[0]:.2f}/{load_after[1]:.2f}/"
          f"{load_after[2]:.2f} on {os.cpu_count()} cores; {args.reps} evaluations each")


if __name__ == "__main__":
    main()
