"""How fast a stop-line lane discharges while pedestrians are on the crossing its turners pass.

A right turn released with the parallel crossing (bedingt verträglich) waits while pedestrians
walk towards its path; on a shared through+right lane the through vehicles behind it wait too.
This runs one scenario with one controller and, every second after the warm-up, records from
the ground-truth simulation whether the lane's signal shows green, whether a pedestrian is on
the crossing, and how many vehicles left the lane.  It prints the lane's discharge rate in each
of the four cases and which destination the stopped head vehicle had.  Evaluation only: it
reads ground truth, no controller does.  Asserts nothing; see docs/adaptive.md ("Where the
delay is").

    .venv/bin/python bench/lane_discharge.py midday --controller fixed --seed 1 \
        [--lane W_app_2] [--crossing :schlosskreuzung_c2] [--out /tmp/atsc-discharge]
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType

from controller.messages import DetectorReading
from sim.drivers import SignalDriver
from sim.runner import case_from_scenario, junction_of, run_one


class LaneProbe:
    """Wraps a driver and counts the lane's departures per signal and crossing state."""

    def __init__(self, inner: SignalDriver, lane: str, crossing: str, tls: str,
                 from_s: float) -> None:
        self.inner = inner
        self.native = inner.native
        self.lane, self.crossing, self.tls, self.from_s = lane, crossing, tls, from_s
        self.seconds: Counter[tuple[bool, bool]] = Counter()
        self.departed: Counter[tuple[bool, bool]] = Counter()
        self.stopped_heads: Counter[tuple[str, bool]] = Counter()
        self._on_lane: set[str] = set()
        self._links: list[int] | None = None

    def step(self, now: float, readings: Sequence[DetectorReading]) -> Mapping[str, str] | None:
        return self.inner.step(now, readings)

    def close(self) -> dict[str, object]:
        return self.inner.close()

    def observe_truth(self, sumo: ModuleType, now: float) -> None:
        hook = getattr(self.inner, "observe_truth", None)
        if hook is not None:
            hook(sumo, now)
        vehicles = sumo.lane.getLastStepVehicleIDs(self.lane)
        left = len(self._on_lane - set(vehicles))
        self._on_lane = set(vehicles)
        if now < self.from_s:
            return
        if self._links is None:
            links = sumo.trafficlight.getControlledLinks(self.tls)
            self._links = [i for i, ln in enumerate(links) if ln and ln[0][0] == self.lane]
        state = sumo.trafficlight.getRedYellowGreenState(self.tls)
        green = any(state[i] in "Gg" for i in self._links)
        walking = bool(sumo.edge.getLastStepPersonIDs(self.crossing))
        self.seconds[(green, walking)] += 1
        self.departed[(green, walking)] += left
        if green and len(vehicles) >= 2:
            head = max(vehicles, key=sumo.vehicle.getLanePosition)
            if sumo.vehicle.getSpeed(head) < 0.5:
                self.stopped_heads[(sumo.vehicle.getRoute(head)[-1], walking)] += 1


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scenario")
    ap.add_argument("--controller", default="fixed")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--lane", default="W_app_2",
                    help="stop-line lane (default: west through+right)")
    ap.add_argument("--crossing", default=":schlosskreuzung_c2",
                    help="crossing its turners pass (default: crossing S)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/atsc-discharge"))
    args = ap.parse_args(argv)

    case = case_from_scenario(args.scenario)
    probes: list[LaneProbe] = []

    def probed(driver: SignalDriver) -> SignalDriver:
        probe = LaneProbe(driver, args.lane, args.crossing, tls, case.begin_s + case.warmup_s)
        probes.append(probe)
        return probe

    tls = junction_of(case).signals.tls_id
    kpis = run_one(case, args.controller, args.seed, args.out, progress=False, probe=probed)
    p = probes[0]
    print(f"{args.scenario} seed {args.seed}, {args.controller}: lane {args.lane}, crossing "
          f"{args.crossing}; vehicle delay "
          f"{'n/a' if kpis.vehicle_delay_s is None else f'{kpis.vehicle_delay_s:.1f} s'}")
    print(f"{'signal':7} {'pedestrians':12} {'seconds':>8} {'left':>6} {'veh/h':>7}")
    for green in (True, False):
        for walking in (True, False):
            s, n = p.seconds[(green, walking)], p.departed[(green, walking)]
            print(f"{'green' if green else 'red':7} {'on crossing' if walking else 'none':12} "
                  f"{s:8d} {n:6d} {3600 * n / max(s, 1):7.0f}")
    g_walk, g_free = p.seconds[(True, True)], p.seconds[(True, False)]
    print(f"pedestrians on the crossing during {g_walk / max(g_walk + g_free, 1):.0%} of the green")
    heads = ", ".join(f"to {edge} {'with' if w else 'without'} pedestrians {n} s"
                      for (edge, w), n in p.stopped_heads.most_common())
    print(f"head vehicle stopped during green (queue behind it): {heads or 'never'}")


if __name__ == "__main__":
    main()
