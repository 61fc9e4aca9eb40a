"""Benchmark: SUMO twin decision latency on the Schlosskreuzung with a morning-peak snapshot.

Prints one table row per worker count: programs per evaluation (8 candidates
plus the running program), horizon, wall time per evaluation (p50/p99, each
evaluation with a new snapshot, so the initial-state build is included) and
twin throughput in simulated seconds per wall second per core.

    .venv/bin/python bench/twin.py [--reps 20] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

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


def morning_snapshot(cfg: TwinConfig, running: SignalProgram, now: float) -> TwinSnapshot:
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
    return b.snapshot(now, None, running, 40)


def candidates(signals: JunctionSignals, running: SignalProgram) -> list[SignalProgram]:
    splits = [(35, 10, 22, 8), (40, 10, 20, 8), (30, 10, 25, 8), (45, 12, 20, 8),
              (28, 10, 18, 6), (50, 10, 25, 10), (33, 8, 28, 8), (38, 12, 15, 6)]
    progs = [compile_plan(signals, StagePlan(SEQ, g), f"c{k}") for k, g in enumerate(splits)]
    return [running, *progs]


def run(workers: int, reps: int, horizon_s: int) -> tuple[int, float, float, float]:
    model = load_junction("schlosskreuzung")
    cfg = twin_config_from_model(model, horizon_s=horizon_s)
    running = compile_plan(model.signals, StagePlan(SEQ, (35, 10, 22, 8)), "running")
    programs = candidates(model.signals, running)
    snaps = [morning_snapshot(cfg, running, 3600.0 + 90.0 * k) for k in range(reps + 1)]
    walls: list[float] = []
    with SumoTwin(cfg, workers=workers) as twin:
        twin.warm_up()
        twin.evaluate(snaps[0], programs)  # first build and program tables
        for snap in snaps[1:]:
            t0 = time.perf_counter()
            twin.evaluate(snap, programs)
            walls.append(time.perf_counter() - t0)
    walls.sort()
    p50 = statistics.median(walls)
    p99 = walls[min(len(walls) - 1, round(0.99 * (len(walls) - 1)))]
    rate = len(programs) * horizon_s / (statistics.mean(walls) * workers)
    return len(programs), p50, p99, rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--horizon", type=int, default=300)
    args = ap.parse_args()
    print(f"{'workers':>7} {'programs':>8} {'horizon_s':>9} {'p50_s':>7} {'p99_s':>7} "
          f"{'sim_s/wall_s/core':>17}")
    for w in args.workers:
        n, p50, p99, rate = run(w, args.reps, args.horizon)
        print(f"{w:>7} {n:>8} {args.horizon:>9} {p50:>7.3f} {p99:>7.3f} {rate:>17.0f}")


if __name__ == "__main__":
    main()
