"""Traffic benchmark: every Schlosskreuzung scenario x controller x seed, side by side.

Runs the scenarios (``sim.demand.list_scenarios``) with fixed, fixed-optimised,
actuated, delay_based, max-pressure, adaptive and oracle on the same seeds, in parallel
(``sim.batch.run_batch``), then prints per scenario the mean vehicle and
person delay of each controller with a 95 % confidence interval over the
seeds, and the paired ratios adaptive/fixed and adaptive/actuated (per seed,
then the mean and its 95 % CI: < 1 means adaptive is better).  A second table
per scenario, "delay incl. insertion", adds the time vehicles waited to enter
the network (``insertion_delay_s``, which ``timeLoss`` does not see) and gives
the same paired ratios on that total (``total_vehicle_delay_s``).  Writes
``kpis.json``, ``summary.json`` and the HTML report (``sim.report``) into
``--out``.  Asserts nothing; evaluation.md asks for >= 5 seeds for headline
numbers.

Last, the targets of issue 3 (``sim.scorecard``): per scenario adaptive/fixed
<= 0.75, adaptive/actuated <= 0.90, pedestrian and bus delay no worse than
fixed, over all runs within 10 % of the oracle, collisions; met or missed, with
the spread.  The report opens with the same table and a plot of it.

    .venv/bin/python bench/traffic.py [--scenarios morning_peak night] \\
        [--controllers fixed adaptive] [--seeds 5] [--workers 2] [--twin-workers 1] \\
        [--horizon-s 300] [--window-s 1800] [--out out/bench-traffic]

``--window-s`` shortens every scenario to its first N seconds after the
warm-up (quick looks; headline numbers use the full scenarios).

``--from A/kpis.json B/kpis.json`` runs nothing: it merges the records of earlier
benchmarks (say adaptive on seeds 1-5 and 6-10, the baselines from a third run)
and prints, scores and reports them as one.  A run present twice is an error.
``--score NAME`` scores another controller than ``adaptive`` (for example
``adaptive-ped-weight``) against the same targets.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

from controller.errors import ConfigError
from sim.batch import run_batch
from sim.demand import list_scenarios
from sim.kpis import RunKpis, group_records, read_kpis_json, write_kpis_json
from sim.report import write_report
from sim.runner import Case, case_from_scenario, junction_of, known_controllers
from sim.scorecard import (
    Score,
    Scorecard,
    ci95_half_width,
    format_scorecard,
    merge_records,
    score,
)

CONTROLLERS = ("fixed", "fixed-optimised", "actuated", "delay_based", "max-pressure", "adaptive",
               "oracle")


def _init_worker(twin_workers: int, horizon_s: int) -> None:
    """Batch worker start: register the adaptive drivers and size their twins."""
    from sim import adaptive_driver

    adaptive_driver.set_twin_defaults(horizon_s=horizon_s, workers=twin_workers)


def ci95(values: Sequence[float]) -> tuple[float, float] | None:
    """Mean and half-width of the 95 % Student-t confidence interval (None if empty)."""
    if not values:
        return None
    return statistics.fmean(values), ci95_half_width(values)


def _jsonable(ci: tuple[float, float] | None) -> dict[str, float | None] | None:
    if ci is None:
        return None
    return {"mean": ci[0], "ci95": None if math.isnan(ci[1]) else ci[1]}


def _fmt(ci: tuple[float, float] | None, unit: str = "") -> str:
    if ci is None:
        return "n/a"
    mean, half = ci
    spread = "" if math.isnan(half) else f" ± {half:.2f}"
    return f"{mean:.2f}{spread}{unit}"


def paired_ratios(
    runs: Sequence[RunKpis], base: Sequence[RunKpis], attr: str
) -> list[float]:
    """Per seed: ``attr`` of ``runs`` over that of ``base`` (same seed, both known)."""
    by_seed = {r.seed: getattr(r, attr) for r in base}
    out: list[float] = []
    for r in runs:
        a, b = getattr(r, attr), by_seed.get(r.seed)
        if a is not None and b:
            out.append(a / b)
    return out


def _ci(runs: Sequence[RunKpis], attr: str) -> tuple[float, float] | None:
    """:func:`ci95` of ``attr`` over the runs that have it."""
    return ci95([float(v) for r in runs if (v := getattr(r, attr)) is not None])


def _ratio_lines(
    by_ctrl: dict[str, list[RunKpis]], labelled: Sequence[tuple[str, str]]
) -> list[str]:
    """The paired adaptive/fixed and adaptive/actuated ratios of ``(label, attr)``."""
    lines: list[str] = []
    adaptive = by_ctrl.get("adaptive", [])
    for base_name in ("fixed", "actuated"):
        base = by_ctrl.get(base_name, [])
        if not adaptive or not base:
            continue
        parts = [
            f"{label} {_fmt(ci95(paired_ratios(adaptive, base, attr)))}"
            for label, attr in labelled
        ]
        lines.append(f"  adaptive/{base_name:<9} " + ", ".join(parts)
                     + "  (paired per seed; < 1 = better)")
    return lines


def summarise(records: Sequence[RunKpis]) -> dict[str, object]:
    """Per scenario and controller: means with CI; per scenario: the adaptive ratios."""
    out: dict[str, object] = {}
    for scenario, by_ctrl in group_records(records).items():
        rows: dict[str, object] = {}
        for ctrl, runs in by_ctrl.items():
            row: dict[str, object] = {"seeds": [r.seed for r in runs]}
            for attr in ("vehicle_delay_s", "person_delay_s", "pedestrian_delay_s",
                         "stops_per_vehicle", "throughput_veh_h", "co2_kg",
                         "insertion_delay_s", "total_vehicle_delay_s"):
                row[attr] = _jsonable(_ci(runs, attr))
            row["teleports"] = sum(r.teleports for r in runs)
            row["collisions"] = sum(r.collisions for r in runs)
            rows[ctrl] = row
        ratios: dict[str, object] = {}
        adaptive = by_ctrl.get("adaptive", [])
        for base_name in ("fixed", "actuated"):
            base = by_ctrl.get(base_name, [])
            for attr in ("vehicle_delay_s", "person_delay_s", "total_vehicle_delay_s"):
                ratios[f"adaptive/{base_name} {attr}"] = _jsonable(
                    ci95(paired_ratios(adaptive, base, attr))
                )
        out[scenario] = {"controllers": rows, "ratios": ratios}
    return out


def print_tables(records: Sequence[RunKpis]) -> None:
    for scenario, by_ctrl in group_records(records).items():
        n = max(len(runs) for runs in by_ctrl.values())
        print(f"\n{scenario} ({n} seed(s); mean ± 95 % CI half-width)")
        print(f"  {'controller':<14}{'vehicle delay s':>20}{'person delay s':>20}"
              f"{'stops/veh':>16}{'teleports':>11}{'collisions':>11}")
        for ctrl, runs in by_ctrl.items():
            def col(attr: str, runs: Sequence[RunKpis] = runs) -> str:
                return _fmt(_ci(runs, attr))

            print(f"  {ctrl:<14}{col('vehicle_delay_s'):>20}{col('person_delay_s'):>20}"
                  f"{col('stops_per_vehicle'):>16}{sum(r.teleports for r in runs):>11}"
                  f"{sum(r.collisions for r in runs):>11}")
        for line in _ratio_lines(
            by_ctrl, (("vehicle", "vehicle_delay_s"), ("person", "person_delay_s"))
        ):
            print(line)
        print(f"\n  delay incl. insertion ({scenario}; vehicle delay + time waiting to enter)")
        print(f"  {'controller':<14}{'vehicle delay s':>20}{'insertion s':>20}"
              f"{'total delay s':>20}")
        for ctrl, runs in by_ctrl.items():
            print(f"  {ctrl:<14}{_fmt(_ci(runs, 'vehicle_delay_s')):>20}"
                  f"{_fmt(_ci(runs, 'insertion_delay_s')):>20}"
                  f"{_fmt(_ci(runs, 'total_vehicle_delay_s')):>20}")
        for line in _ratio_lines(by_ctrl, (("total", "total_vehicle_delay_s"),)):
            print(line)


def _scorecard(records: Sequence[RunKpis], controller: str) -> Scorecard | None:
    """Print and return the targets of ``controller``; None when it did not run."""
    if not any(r.controller == controller for r in records):
        print(f"\n(no {controller} runs: no target scorecard)")
        return None
    card = score(records, controller)
    print("\n" + format_scorecard(card))
    return card


def scorecard_json(card: Scorecard) -> dict[str, object]:
    """The scorecard for summary.json: ratio, CI, met and n per scenario and target."""
    def cell(s: Score) -> dict[str, object]:
        return {"ratio": s.ratio, "ci95": s.half_width, "met": s.met, "n": s.n,
                "limit": s.target.limit}

    rows: dict[str, object] = {
        scenario: {s.target.label: cell(s) for s in scores}
        for scenario, scores in card.scenarios.items()
    }
    rows["all runs"] = {s.target.label: cell(s) for s in card.overall}
    return {
        "controller": card.controller,
        "scenarios": rows,
        "oracle": None if card.oracle is None else cell(card.oracle),
        "collisions": dict(card.collisions),
        "missed": card.missed,
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenarios", nargs="*", default=None, help="default: every scenario")
    ap.add_argument("--controllers", nargs="*", default=list(CONTROLLERS))
    ap.add_argument("--seeds", type=int, default=5, help="number of seeds (1..N)")
    ap.add_argument("--seed-list", type=int, nargs="*", default=None, help="explicit seeds")
    ap.add_argument("--workers", type=int, default=2, help="scenario runs in parallel")
    ap.add_argument("--twin-workers", type=int, default=1,
                    help="twin processes per adaptive/oracle run")
    ap.add_argument("--horizon-s", type=int, default=300, help="twin horizon")
    ap.add_argument("--window-s", type=float, default=None,
                    help="measure only this long after the warm-up (quick looks)")
    ap.add_argument("--out", type=Path, default=Path("out/bench-traffic"))
    ap.add_argument("--from", dest="sources", type=Path, nargs="+", default=None,
                    metavar="KPIS_JSON", help="run nothing: merge, score and report these")
    ap.add_argument("--score", default="adaptive", help="controller scored against the targets")
    args = ap.parse_args(argv)

    cases: list[Case] = []
    if args.sources:
        try:
            records = merge_records(*(read_kpis_json(p) for p in args.sources))
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        wanted = set(args.scenarios or ())
        if wanted:
            records = [r for r in records if r.scenario in wanted]
        if records:
            cases.append(case_from_scenario(records[0].scenario))
    else:
        # Bad input fails here, in one line, before any run starts.
        unknown = sorted(set(args.controllers) - set(known_controllers()))
        if unknown:
            print(f"error: unknown controller(s) {', '.join(unknown)}; known: "
                  f"{', '.join(known_controllers())}", file=sys.stderr)
            return 2
        if args.window_s is not None and args.window_s <= 0:
            print("error: --window-s must be positive", file=sys.stderr)
            return 2
        names = args.scenarios or list_scenarios()
        seeds = args.seed_list or list(range(1, args.seeds + 1))
        try:
            for name in names:
                case = case_from_scenario(name)
                if args.window_s is not None:
                    end = min(case.end_s, case.begin_s + case.warmup_s + args.window_s)
                    case = replace(case, end_s=end)
                cases.append(case)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        pool = ProcessPoolExecutor(
            max_workers=args.workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker, initargs=(args.twin_workers, args.horizon_s),
        )
        with pool:
            records = run_batch(cases, args.controllers, seeds, args.out, executor=pool,
                                workers=args.workers)
    if not records:
        print("error: no runs to report", file=sys.stderr)
        return 2
    print_tables(records)
    card = _scorecard(records, args.score)
    args.out.mkdir(parents=True, exist_ok=True)
    write_kpis_json(records, args.out / "kpis.json")
    summary = summarise(records)
    if card is not None:
        summary["targets"] = scorecard_json(card)
    (args.out / "summary.json").write_text(
        json.dumps(summary, indent=1, allow_nan=False) + "\n", encoding="utf-8"
    )
    model = junction_of(cases[0])
    report = write_report(
        args.out, records, title="Schlosskreuzung: adaptive control against the baselines",
        link_groups={i: g.id for g in model.signals.groups for i in g.links},
        group_order=model.signals.group_ids, scorecard=card,
    )
    print(f"\nwrote {args.out / 'kpis.json'}, {args.out / 'summary.json'} and {report}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
