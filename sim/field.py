"""The ground-truth field run: one SUMO simulation playing the junction.

Each simulated second:

1. SUMO advances one step (the signal states set in the previous second apply);
2. the field detectors produce their readings (``sim.detectors``);
3. the signal driver turns the readings into the signal group states for the
   next second (or SUMO's own logic does, for the native baselines);
4. the conflict monitor checks the states actually shown;
5. the ground-truth queue per approach is recorded for the KPIs.

The driver never sees the simulation: it gets detector readings only.
"""

from __future__ import annotations

import csv
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from sim.detectors import FieldDetectors
from sim.drivers import SignalDriver
from sim.junction import JunctionModel
from sim.monitor import ConflictMonitor
from sim.tlsprogram import LinkStates

#: Vehicle spacing in a standing queue (length + gap), for queue length in metres.
QUEUE_SPACING_M = 7.5
QUEUES_FILE = "queues.csv"


@dataclass(frozen=True)
class FieldRun:
    """Everything SUMO needs for one run (plain paths and numbers: picklable)."""

    net_file: Path
    route_files: tuple[Path, ...]
    additional_files: tuple[Path, ...]
    begin_s: float
    end_s: float
    seed: int
    run_dir: Path
    sumocfg: Path | None = None
    extra_args: tuple[str, ...] = ()
    #: Program id to activate at the start (SUMO-native baselines).
    native_program: str | None = None


@dataclass
class FieldResult:
    sim_seconds: int = 0
    wall_time_s: float = 0.0
    monitor_faults: list[str] = field(default_factory=list)
    collisions_seen: int = 0
    driver_stats: dict[str, object] = field(default_factory=dict)


def sumo_binary() -> str:
    """The SUMO binary of the pinned eclipse-sumo wheel (libsumo needs a name only)."""
    import sumo

    return str(Path(sumo.SUMO_HOME) / "bin" / "sumo")


def sumo_command(run: FieldRun, kpi_args: Sequence[str]) -> list[str]:
    cmd = [sumo_binary()]
    if run.sumocfg is not None:
        cmd += ["-c", str(run.sumocfg)]
    else:
        cmd += ["-n", str(run.net_file)]
    if run.route_files:
        cmd += ["-r", ",".join(str(p) for p in run.route_files)]
    if run.additional_files:
        cmd += ["-a", ",".join(str(p) for p in run.additional_files)]
    cmd += [
        "--begin", str(int(run.begin_s)),
        "--end", str(int(run.end_s)),
        "--seed", str(run.seed),
        "--step-length", "1",
        "--no-step-log", "true",
        "--duration-log.disable", "true",
        "--no-warnings", "true",
        "--time-to-teleport", "300",
        *kpi_args,
        *run.extra_args,
    ]

    return cmd


def simulate(
    run: FieldRun,
    model: JunctionModel,
    driver: SignalDriver,
    kpi_args: Sequence[str],
    *,
    progress: Callable[[float], None] | None = None,
) -> FieldResult:
    """Run one field simulation with ``driver`` controlling the junction's traffic light."""
    import libsumo

    sumo: ModuleType = libsumo
    result = FieldResult()
    started = time.perf_counter()
    running = False
    try:
        sumo.start(sumo_command(run, kpi_args))
        running = True
        tls = model.signals.tls_id
        if tls not in sumo.trafficlight.getIDList():
            raise ValueError(f"traffic light {tls!r} not in the simulation")
        if run.native_program is not None:
            sumo.trafficlight.setProgram(tls, run.native_program)
        truth_hook = getattr(driver, "observe_truth", None)
        links = LinkStates(model.signals, model.minor_links)
        detectors = FieldDetectors(
            sumo, model.detectors,
            {pid: (pb.crossing,) for pid, pb in model.push_buttons.items()},
        )
        monitor = ConflictMonitor(model.signals)
        queue_lanes = {
            a.id: [
                f"{edge}_{i}"
                for edge in a.in_edges
                for i in range(sumo.edge.getLaneNumber(edge))
            ]
            for a in model.approaches
        }
        run.run_dir.mkdir(parents=True, exist_ok=True)
        with (run.run_dir / QUEUES_FILE).open("w", newline="") as qf:
            writer = csv.writer(qf)
            writer.writerow(["time_s", "approach", "queue_m", "halting_veh"])
            t = sumo.simulation.getTime()
            next_report = t + 900
            # The first second already shows the driver's states, never the network's
            # built-in program.
            first = driver.step(t, [])
            if first is not None:
                sumo.trafficlight.setRedYellowGreenState(tls, links.encode(first))
                for fault in monitor.observe(first):
                    result.monitor_faults.append(str(fault))
            while t < run.end_s:
                sumo.simulationStep()
                t = sumo.simulation.getTime()
                readings = detectors.read(t)
                if truth_hook is not None:
                    # Evaluation-only drivers (the "oracle") see ground truth; no other does.
                    truth_hook(sumo, t)
                states = driver.step(t, readings)
                if states is not None:
                    sumo.trafficlight.setRedYellowGreenState(tls, links.encode(states))
                    shown: Mapping[str, str] = states
                else:
                    shown = links.decode(sumo.trafficlight.getRedYellowGreenState(tls))
                for fault in monitor.observe(shown):
                    if len(result.monitor_faults) < 100:
                        result.monitor_faults.append(str(fault))
                result.collisions_seen += sumo.simulation.getCollidingVehiclesNumber()
                for approach, lanes in queue_lanes.items():
                    halting = [sumo.lane.getLastStepHaltingNumber(ln) for ln in lanes]
                    writer.writerow(
                        [int(t), approach, max(halting, default=0) * QUEUE_SPACING_M, sum(halting)]
                    )
                if progress is not None and t >= next_report:
                    progress(t)
                    next_report += 900
            result.sim_seconds = int(t - run.begin_s)
    finally:
        # The driver is closed whatever SUMO did: it may hold an MQTT link or twin workers.
        try:
            if running:
                sumo.close()
        finally:
            result.driver_stats = driver.close()
            result.wall_time_s = time.perf_counter() - started
    return result


def print_progress(label: str) -> Callable[[float], None]:
    def report(t: float) -> None:
        print(f"  {label}: {t:.0f} s simulated", file=sys.stderr, flush=True)

    return report
