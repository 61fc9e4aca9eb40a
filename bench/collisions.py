"""Collisions at the junction: every scenario x controller x seed, by collision type.

Runs the scenarios with SUMO's junction collision check on (sim/kpis.py
``kpi_sumo_args``) and prints one row per scenario and controller, summed over
the seeds: collisions by type (``crossing`` = vehicle/pedestrian on a crossing,
``junction`` = inside the junction, ``collision`` = on a lane), teleports,
emergency stops and the mean vehicle delay.  Asserts nothing; see
docs/junction.md, "Collisions".

    .venv/bin/python bench/collisions.py [--seeds 1 2 3] [--controllers fixed actuated]
        [--scenarios morning_peak ...] [--end-s 4500] [--workers 2] [--out /tmp/atsc-collisions]
"""

from __future__ import annotations

import argparse
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import replace
from pathlib import Path

from sim.batch import run_batch
from sim.demand import list_scenarios
from sim.kpis import COLLISIONS_FILE, RunKpis
from sim.runner import case_from_scenario

TYPES = ("crossing", "junction", "collision")


def collision_types(run_dir: Path) -> Counter[str]:
    """Collision count by SUMO collision type (and victim type) from collisions.xml."""
    out: Counter[str] = Counter()
    path = run_dir / COLLISIONS_FILE
    if not path.is_file():
        return out
    for el in ET.parse(path).getroot().iter("collision"):
        out[el.get("type", "?")] += 1
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", nargs="*", default=None)
    ap.add_argument("--controllers", nargs="*", default=["fixed", "actuated"])
    ap.add_argument("--seeds", nargs="*", type=int, default=[1, 2, 3])
    ap.add_argument("--end-s", type=float, default=None, help="shorten every scenario")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("/tmp/atsc-collisions"))
    args = ap.parse_args(argv)

    names = args.scenarios or list_scenarios()
    cases = []
    for n in names:
        c = case_from_scenario(n)
        if args.end_s is not None:
            c = replace(c, end_s=args.end_s, warmup_s=min(c.warmup_s, args.end_s / 3))
        cases.append(c)
    kpis = run_batch(cases, args.controllers, args.seeds, args.out, workers=args.workers)

    rows: dict[tuple[str, str], list[RunKpis]] = {}
    for k in kpis:
        rows.setdefault((k.scenario, k.controller), []).append(k)
    head = (f"{'scenario':<20} {'controller':<10} {'coll':>5} "
            + " ".join(f"{t:>9}" for t in TYPES)
            + f" {'ped-vict':>8} {'teleports':>9} {'em.stops':>8} {'veh delay s':>11}")
    print(f"seeds {args.seeds}, collisions summed over seeds, delay = mean of seeds")
    print(head)
    print("-" * len(head))
    total = Counter[str]()
    for (scen, ctrl), ks in rows.items():
        types: Counter[str] = Counter()
        ped = 0
        for k in ks:
            types += collision_types(Path(k.run_dir))
            path = Path(k.run_dir) / COLLISIONS_FILE
            if path.is_file():
                ped += sum(1 for el in ET.parse(path).getroot().iter("collision")
                           if el.get("victimType") == "pedestrian"
                           or el.get("colliderType") == "pedestrian")
        coll = sum(k.collisions for k in ks)
        tele = sum(k.teleports + k.person_teleports for k in ks)
        estop = sum(k.emergency_stops for k in ks)
        delays = [k.vehicle_delay_s for k in ks if k.vehicle_delay_s is not None]
        delay = f"{sum(delays) / len(delays):11.1f}" if delays else f"{'n/a':>11}"
        total.update(coll=coll, tele=tele, estop=estop, ped=ped, **{t: types[t] for t in TYPES})
        print(f"{scen:<20} {ctrl:<10} {coll:>5} "
              + " ".join(f"{types[t]:>9}" for t in TYPES)
              + f" {ped:>8} {tele:>9} {estop:>8} {delay}")
    print("-" * len(head))
    print(f"{'total':<20} {'':<10} {total['coll']:>5} "
          + " ".join(f"{total[t]:>9}" for t in TYPES)
          + f" {total['ped']:>8} {total['tele']:>9} {total['estop']:>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
