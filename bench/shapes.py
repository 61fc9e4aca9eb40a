"""Junction shapes: the controllers, unchanged, on generated junctions of other shapes.

Generates networks with the wheel's ``netgenerate`` (a 3x3 grid with traffic
lights, whose centre light ``B1`` is a 4-arm junction; a 3-arm and a 5-arm
spider, controlled at their centre), writes random trips between the arms of
the centre junction (every turn but U-turns; 300-500 veh/h per approach), and
runs ``atsc run --net NET --routes ROUTES --tls ID`` with fixed, actuated,
max-pressure and adaptive as a subprocess.  The runner derives signal groups,
conflicts, intergreens, stages, detectors and the Webster fixed-time plan
from the net alone; nothing here is tuned per junction.

Demand: per network, the approach flows and turn splits are drawn once
(``--pattern-seed``); per seed, a ``numpy`` Generator seeded with the seed
draws the Poisson arrivals and each vehicle's exit, so seeds differ in their
demand.  Since ``atsc run`` takes one route file for all its seeds, each seed
is one ``atsc run ... --seeds 1`` with its own route file (SUMO's own seed is
then 1 in every run); ``--shared-demand`` instead writes one route file and
runs ``atsc run ... --seeds N`` once (seeds then differ only in SUMO's
randomness).

Prints one table: per network and controller the mean vehicle delay ± the
standard deviation over the seeds, stops per vehicle, throughput, teleports,
collisions and the delay ratio to fixed (< 1 is better); then, per network,
what the adaptive core did (decisions, plans pushed, rejections, seconds in
fallback).  Writes ``shapes.json`` (table, adaptive statistics and every KPI
record) into ``--out``.  Asserts nothing; runs one simulation at a time.

    nice -n 5 .venv/bin/python bench/shapes.py [--networks grid4 spider3 spider5] \\
        [--seeds 3] [--end 2100] [--warmup 300] [--shared-demand] \\
        [--out /tmp/atsc-bench-shapes]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sim.netbuild import sumo_binary

CONTROLLERS = ("fixed", "actuated", "max-pressure", "adaptive")
BASELINE = "fixed"


@dataclass(frozen=True)
class Shape:
    name: str
    title: str
    arms: int
    netgenerate_args: tuple[str, ...]


SHAPES: dict[str, Shape] = {
    s.name: s
    for s in (
        Shape("grid4", "grid 3x3, centre B1", 4, (
            "--grid", "--grid.number=3", "--grid.length=200", "--default.lanenumber=2",
            "--tls.guess", "true", "--no-turnarounds", "true")),
        Shape("spider3", "spider, 3 arms", 3, (
            "--spider", "--spider.arm-number=3", "--spider.circle-number=1",
            "--spider.space-radius=200", "--default.lanenumber=2",
            "--tls.guess", "true", "--no-turnarounds", "true")),
        Shape("spider5", "spider, 5 arms", 5, (
            "--spider", "--spider.arm-number=5", "--spider.circle-number=1",
            "--spider.space-radius=200", "--default.lanenumber=2",
            "--tls.guess", "true", "--no-turnarounds", "true")),
    )
}


@dataclass
class Network:
    shape: Shape
    net_file: Path
    tls_id: str
    junction_id: str
    in_edges: list[str]
    out_edges: list[str]
    edge_ends: dict[str, tuple[str, str]]  # edge -> (from node, to node)

    def exits(self, in_edge: str) -> list[str]:
        """Outgoing edges of the centre reachable without a U-turn."""
        src = self.edge_ends[in_edge][0]
        return [e for e in self.out_edges if self.edge_ends[e][1] != src]


@dataclass
class Outcome:
    network: Network
    records: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    trips: list[int] = field(default_factory=list)


class BenchError(Exception):
    """A step failed; the message is one line."""


def _progress(msg: str) -> None:
    print(msg, flush=True)


def build_network(shape: Shape, out: Path) -> Network:
    """Run netgenerate and find the centre traffic light and its arms."""
    net_file = out / f"{shape.name}.net.xml"
    cmd = [str(sumo_binary("netgenerate")), *shape.netgenerate_args, "-o", str(net_file)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BenchError(f"netgenerate failed: {_last_line(proc.stderr or proc.stdout)}")
    root = ET.parse(net_file).getroot()
    nodes: dict[str, tuple[float, float, str]] = {}
    for j in root.iter("junction"):
        if j.get("type") != "internal":
            nodes[j.get("id", "")] = (float(j.get("x", 0)), float(j.get("y", 0)),
                                      j.get("type", ""))
    if not nodes:
        raise BenchError("the generated net has no junctions")
    cx = statistics.fmean(x for x, _, _ in nodes.values())
    cy = statistics.fmean(y for _, y, _ in nodes.values())
    lights = [n for n, (_, _, kind) in nodes.items() if kind.startswith("traffic_light")]
    if not lights:
        raise BenchError("the generated net has no traffic lights (--tls.guess)")
    centre = min(lights, key=lambda n: math.hypot(nodes[n][0] - cx, nodes[n][1] - cy))
    edge_ends: dict[str, tuple[str, str]] = {}
    for e in root.iter("edge"):
        if e.get("function") is None:
            edge_ends[e.get("id", "")] = (e.get("from", ""), e.get("to", ""))
    in_edges = sorted(e for e, (_, b) in edge_ends.items() if b == centre)
    out_edges = sorted(e for e, (a, _) in edge_ends.items() if a == centre)
    if len(in_edges) != shape.arms or len(out_edges) != shape.arms:
        raise BenchError(f"centre junction {centre} has {len(in_edges)} incoming and "
                         f"{len(out_edges)} outgoing edges, expected {shape.arms}")
    tls_ids = {c.get("tl") for c in root.iter("connection")
               if c.get("from") in in_edges and c.get("tl")}
    if len(tls_ids) != 1:
        raise BenchError(f"centre junction {centre} is controlled by {sorted(map(str, tls_ids))}")
    return Network(shape, net_file, str(tls_ids.pop()), centre, in_edges, out_edges, edge_ends)


@dataclass(frozen=True)
class Pattern:
    """Mean demand of a network: veh/h per approach and the exit probabilities."""

    flows: dict[str, float]
    splits: dict[str, dict[str, float]]


def demand_pattern(net: Network, pattern_seed: int) -> Pattern:
    rng = np.random.default_rng([pattern_seed, zlib.crc32(net.shape.name.encode())])
    flows: dict[str, float] = {}
    splits: dict[str, dict[str, float]] = {}
    for e in net.in_edges:
        flows[e] = float(rng.uniform(300.0, 500.0))
        exits = net.exits(e)
        weights = rng.dirichlet(np.full(len(exits), 4.0))
        splits[e] = {x: float(w) for x, w in zip(exits, weights, strict=True)}
    return Pattern(flows, splits)


def write_routes(net: Network, pattern: Pattern, seed: int, end_s: float, path: Path) -> int:
    """Poisson arrivals per approach over [0, end_s), each with a random exit; returns trips."""
    rng = np.random.default_rng([seed, zlib.crc32(net.shape.name.encode())])
    trips: list[tuple[float, str, str]] = []
    for src in net.in_edges:
        rate = pattern.flows[src] / 3600.0
        exits = list(pattern.splits[src])
        probs = np.array([pattern.splits[src][x] for x in exits])
        t = float(rng.exponential(1.0 / rate))
        while t < end_s:
            dst = exits[int(rng.choice(len(exits), p=probs))]
            trips.append((round(t, 1), src, dst))
            t += float(rng.exponential(1.0 / rate))
    trips.sort()
    lines = [f'  <trip id="{net.shape.name}_{k}" depart="{t:.1f}" from="{src}" to="{dst}" '
             f'departLane="best" departSpeed="max"/>'
             for k, (t, src, dst) in enumerate(trips)]
    path.write_text("<routes>\n" + "\n".join(lines) + "\n</routes>\n")
    return len(trips)


def _atsc_command() -> list[str]:
    exe = Path(sys.executable).parent / "atsc"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "controller.cli"]


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def run_atsc(net: Network, routes: Path, *, seeds: int, end_s: float, warmup_s: float,
             out: Path, timeout_s: float) -> list[dict[str, Any]]:
    """One ``atsc run`` as a subprocess (output to out/atsc.log); its KPI records."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [*_atsc_command(), "run", "--net", str(net.net_file), "--routes", str(routes),
           "--tls", net.tls_id]
    for c in CONTROLLERS:
        cmd += ["--controller", c]
    cmd += ["--seeds", str(seeds), "--end", f"{end_s:g}", "--warmup", f"{warmup_s:g}",
            "--workers", "1", "--no-report", "--out", str(out)]
    log = out / "atsc.log"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise BenchError(f"atsc run timed out after {timeout_s:g} s") from None
    log.write_text(" ".join(cmd) + "\n\n" + proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if proc.returncode != 0:
        raise BenchError(f"atsc run failed ({proc.returncode}): "
                         f"{_last_line(proc.stderr or proc.stdout)}")
    records: list[dict[str, Any]] = json.loads((out / "kpis.json").read_text())
    for r in records:
        run_json = Path(r.get("run_dir", "")) / "run.json"
        if run_json.is_file():
            info = json.loads(run_json.read_text())
            r["driver"] = info.get("driver", {})
            r["webster_cycle_s"] = info.get("webster", {}).get("cycle_s")
    return records


def bench_network(net: Network, args: argparse.Namespace) -> Outcome:
    outcome = Outcome(net)
    pattern = demand_pattern(net, args.pattern_seed)
    where = args.out / net.shape.name
    tag = f"[{net.shape.name}]"
    flows = ", ".join(f"{e} {q:.0f}" for e, q in pattern.flows.items())
    _progress(f"{tag} demand veh/h per approach: {flows}")
    batches = [(1, args.seeds)] if args.shared_demand else [(s, 1) for s in
                                                            range(1, args.seeds + 1)]
    for seed, n_seeds in batches:
        label = f"seeds 1..{n_seeds}" if args.shared_demand else f"seed {seed}"
        routes = where / f"{net.shape.name}.seed{seed}.rou.xml"
        n_trips = write_routes(net, pattern, seed, args.end, routes)
        outcome.trips.append(n_trips)
        _progress(f"{tag} {label}: {n_trips} trips; atsc run "
                  f"({', '.join(CONTROLLERS)}) ...")
        t0 = time.monotonic()
        run_out = where / ("run" if args.shared_demand else f"seed{seed}")
        try:
            records = run_atsc(net, routes, seeds=n_seeds, end_s=args.end, warmup_s=args.warmup,
                               out=run_out, timeout_s=args.timeout_s)
        except BenchError as exc:
            outcome.error = str(exc)
            _progress(f"{tag} {label}: {exc} (log: {run_out / 'atsc.log'}); network dropped")
            return outcome
        if not args.shared_demand:
            for r in records:
                r["sumo_seed"] = r["seed"]
                r["seed"] = seed
        outcome.records.extend(records)
        _progress(f"{tag} {label}: done in {time.monotonic() - t0:.0f} s")
    return outcome


def _mean(records: Sequence[dict[str, Any]], key: str) -> float:
    vals = [float(r[key]) for r in records if r.get(key) is not None]
    return statistics.fmean(vals) if vals else math.nan


def summarise(outcome: Outcome) -> list[dict[str, Any]]:
    by_ctrl: dict[str, list[dict[str, Any]]] = {}
    for r in outcome.records:
        by_ctrl.setdefault(r["controller"], []).append(r)
    base = _mean(by_ctrl.get(BASELINE, []), "vehicle_delay_s")
    rows = []
    for ctrl in CONTROLLERS:
        runs = by_ctrl.get(ctrl, [])
        if not runs:
            continue
        # A run in which no vehicle finished has no delay (None): left out, as _mean does.
        delays = [float(r["vehicle_delay_s"]) for r in runs if r["vehicle_delay_s"] is not None]
        if not delays:
            continue
        mean = statistics.fmean(delays)
        rows.append({
            "controller": ctrl,
            "seeds": len(runs),
            "vehicle_delay_s": mean,
            "vehicle_delay_std_s": statistics.stdev(delays) if len(delays) > 1 else None,
            "stops_per_vehicle": _mean(runs, "stops_per_vehicle"),
            "throughput_veh_h": _mean(runs, "throughput_veh_h"),
            "teleports": sum(int(r.get("teleports") or 0) for r in runs),
            "collisions": sum(int(r.get("collisions") or 0) for r in runs),
            "insertion_backlog": sum(int(r.get("insertion_backlog") or 0) for r in runs),
            "ratio_to_fixed": mean / base if base and not math.isnan(base) else None,
        })
    return rows


def adaptive_stats(outcome: Outcome) -> dict[str, Any]:
    runs = [r.get("driver", {}) for r in outcome.records if r["controller"] == "adaptive"]
    keys = ("decisions", "plans_pushed", "renewals", "plans_accepted_by_hardware",
            "rejected_by_hardware", "fallback_decisions", "hardware_fallbacks",
            "seconds_in_fallback", "decision_failures", "monitor_faults")
    out: dict[str, Any] = {k: sum(int(d.get(k) or 0) for d in runs) for k in keys}
    out["rejected_by_validator"] = sum(sum((d.get("rejected_by_validator") or {}).values())
                                       for d in runs)
    out["runs"] = len(runs)
    return out


def print_table(outcomes: Sequence[Outcome]) -> None:
    header = ["network", "controller", "seeds", "veh delay s", "stops/veh", "veh/h",
              "teleports", "collisions", "delay/fixed"]
    rows: list[list[str]] = []
    for o in outcomes:
        name = f"{o.network.shape.name} ({o.network.shape.arms} arms, tls {o.network.tls_id})"
        for row in summarise(o):
            std = row["vehicle_delay_std_s"]
            ratio = row["ratio_to_fixed"]
            rows.append([
                name, row["controller"], str(row["seeds"]),
                f"{row['vehicle_delay_s']:.1f} ± {std:.1f}" if std is not None
                else f"{row['vehicle_delay_s']:.1f}",
                f"{row['stops_per_vehicle']:.2f}", f"{row['throughput_veh_h']:.0f}",
                str(row["teleports"]), str(row["collisions"]),
                "-" if ratio is None else f"{ratio:.2f}",
            ])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    print()
    print(line(header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))
    for o in outcomes:
        a = adaptive_stats(o)
        cycles = sorted({r["webster_cycle_s"] for r in o.records
                         if r.get("webster_cycle_s") is not None})
        notes = [f"Webster cycle {'/'.join(map(str, cycles))} s"] if cycles else []
        if a["runs"] and a["plans_pushed"] == 0:
            notes.append("adaptive kept the fixed-time plan throughout")
        backlog = sum(int(r.get("insertion_backlog") or 0) for r in o.records)
        if backlog:
            notes.append(f"{backlog} vehicles still waiting to enter at the end "
                         f"(all runs; oversaturated)")
        if a["runs"]:
            print(f"{o.network.shape.name}: adaptive made {a['decisions']} decisions, pushed "
                  f"{a['plans_pushed']} plans ({a['plans_accepted_by_hardware']} accepted, "
                  f"{a['rejected_by_hardware']} rejected by hardware, "
                  f"{a['rejected_by_validator']} by the validator), "
                  f"{a['seconds_in_fallback']} s on the fallback plan over {a['runs']} run(s)"
                  + "".join(f"; {n}" for n in notes))
        elif notes:
            print(f"{o.network.shape.name}: " + "; ".join(notes))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--networks", nargs="+", choices=sorted(SHAPES),
                    default=["grid4", "spider3", "spider5"])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--end", type=float, default=2100.0, help="simulation end (s)")
    ap.add_argument("--warmup", type=float, default=300.0, help="warm-up excluded from KPIs (s)")
    ap.add_argument("--pattern-seed", type=int, default=0,
                    help="seed of the per-network approach flows and turn splits")
    ap.add_argument("--shared-demand", action="store_true",
                    help="one route file for all seeds and a single atsc run --seeds N")
    ap.add_argument("--timeout-s", type=float, default=3600.0,
                    help="time limit of each atsc run")
    ap.add_argument("--out", type=Path, default=Path("/tmp/atsc-bench-shapes"))
    args = ap.parse_args(argv)
    if args.seeds < 1:
        ap.error("--seeds must be at least 1")
    if not 0 <= args.warmup < args.end:
        ap.error("--warmup must lie inside [0, --end)")
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)

    outcomes: list[Outcome] = []
    failed: list[tuple[str, str]] = []
    for name in args.networks:
        shape = SHAPES[name]
        (args.out / name).mkdir(parents=True, exist_ok=True)
        try:
            net = build_network(shape, args.out / name)
        except (BenchError, ET.ParseError, OSError) as exc:
            _progress(f"[{name}] {exc}; network dropped")
            failed.append((name, str(exc)))
            continue
        _progress(f"[{name}] netgenerate: {net.net_file.name}, centre junction "
                  f"{net.junction_id}, tls {net.tls_id}, {shape.arms} arms")
        outcome = bench_network(net, args)
        if outcome.error is not None:
            failed.append((name, outcome.error))
        elif outcome.records:
            outcomes.append(outcome)

    print_table(outcomes)
    for name, err in failed:
        print(f"dropped {name}: {err}")
    summary = {
        "command": [sys.argv[0], *(sys.argv[1:] if argv is None else argv)],
        "settings": {"seeds": args.seeds, "end_s": args.end, "warmup_s": args.warmup,
                     "pattern_seed": args.pattern_seed, "shared_demand": args.shared_demand,
                     "controllers": list(CONTROLLERS)},
        "networks": [{
            "name": o.network.shape.name, "title": o.network.shape.title,
            "arms": o.network.shape.arms, "tls": o.network.tls_id,
            "junction": o.network.junction_id, "net_file": str(o.network.net_file),
            "netgenerate_args": list(o.network.shape.netgenerate_args),
            "trips_per_route_file": o.trips,
            "rows": summarise(o), "adaptive": adaptive_stats(o),
        } for o in outcomes],
        "dropped": [{"name": n, "error": e} for n, e in failed],
        "records": [r for o in outcomes for r in o.records],
    }
    (args.out / "shapes.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"\nwrote {args.out / 'shapes.json'}")
    return 1 if failed and not outcomes else 0


if __name__ == "__main__":
    raise SystemExit(main())
