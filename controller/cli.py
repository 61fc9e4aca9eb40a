"""The ``atsc`` command.

    atsc run SCENARIO --controller NAME [--controller NAME ...] --seeds N --out DIR
    atsc run --net FILE --routes FILE[,FILE] --tls ID ...
    atsc run --sumocfg FILE --tls ID [--begin S] [--end S] ...
    atsc scenarios                     list the shipped scenarios
    atsc serve [--config FILE] [--broker HOST:PORT] [--metrics-port N]
    atsc field SCENARIO [--broker HOST:PORT] [--speed X]

This module is the composition root: the only place in ``controller/`` that
imports ``sim/`` (lazily, inside the commands), so the controller core stays
free of SUMO.  Bad input ends with one line on stderr naming the file and the
problem, and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from controller.errors import ConfigError, SimulationError

EXIT_CONFIG = 2
#: SUMO stopped a run (its message is printed).
EXIT_SIMULATION = 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="atsc", description="Adaptive traffic signal control.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run controllers on a scenario and compare their KPIs")
    run.add_argument("scenario", nargs="?", help="scenario name under scenarios/, or a .toml path")
    run.add_argument("--controller", action="append", dest="controllers", metavar="NAME",
                     help="controller to run (repeatable); default: fixed and actuated")
    run.add_argument("--seeds", type=int, default=1, help="number of seeds (1..N), default 1")
    run.add_argument("--out", type=Path, default=Path("out/run"), help="output folder")
    run.add_argument("--net", type=Path, help="any SUMO network (.net.xml)")
    run.add_argument("--routes", help="route files for --net, comma separated")
    run.add_argument("--additional", help="additional files for --net, comma separated")
    run.add_argument("--sumocfg", type=Path, help="an existing SUMO configuration")
    run.add_argument("--tls", help="id of the traffic light to control (with --net/--sumocfg)")
    run.add_argument("--begin", type=float, help="simulation begin (s); overrides the config")
    run.add_argument("--end", type=float, help="simulation end (s); overrides the config")
    run.add_argument("--warmup", type=float, help="warm-up excluded from KPIs (s)")
    run.add_argument("--workers", type=int, default=2, help="parallel simulations (default 2)")
    run.add_argument("--dask-scheduler", metavar="ADDRESS",
                     help="run the batch on a Dask distributed cluster")
    run.add_argument("--dask-local", type=int, metavar="N",
                     help="start a local Dask cluster with N workers for the batch")
    run.add_argument("--no-report", action="store_true", help="skip plots and report.html")

    sub.add_parser("scenarios", help="list the shipped scenarios")

    serve = sub.add_parser("serve", help="run the live controller service (MQTT)")
    serve.add_argument("--config", type=Path,
                       help="service config (TOML); default: the Schlosskreuzung example in ops/")
    serve.add_argument("--broker", metavar="HOST:PORT", help="override the config's broker")
    serve.add_argument("--metrics-port", type=int, help="override the Prometheus port")

    fld = sub.add_parser("field", help="hardware-in-the-loop: a SUMO field on an MQTT broker")
    fld.add_argument("scenario", help="scenario name under scenarios/, or a .toml path")
    fld.add_argument("--broker", metavar="HOST:PORT", default="127.0.0.1:1883")
    fld.add_argument("--speed", type=float, default=1.0,
                     help="simulated seconds per wall-clock second (1 = real time)")
    fld.add_argument("--seed", type=int, default=1)
    fld.add_argument("--out", type=Path, default=Path("out/field"))
    fld.add_argument("--begin", type=float, help="simulation begin (s)")
    fld.add_argument("--end", type=float, help="simulation end (s)")
    fld.add_argument("--junction-name", help="topic junction name (default: the junction's)")
    fld.add_argument("--username", help="MQTT username (default: field-<junction>)")
    fld.add_argument("--password-file", type=Path, help="file holding the MQTT password")
    fld.add_argument("--cafile", type=Path, help="CA certificate for TLS")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "serve":
            from controller.service.app import serve_command

            return serve_command(args)
        if args.command == "field":
            from sim.field_mqtt import field_command

            return field_command(args)
        if args.command == "scenarios":
            from sim.demand import list_scenarios, load_scenario

            for name in list_scenarios():
                print(f"{name:22s} {load_scenario(name).title}")
            return 0
    except ConfigError as exc:
        print(f"atsc: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except SimulationError as exc:
        print(f"atsc: error: {exc}", file=sys.stderr)
        return EXIT_SIMULATION
    except KeyboardInterrupt:
        return 130
    return 1


def _split(value: str | None) -> tuple[Path, ...]:
    return tuple(Path(v) for v in (value or "").split(",") if v)


def _run(args: argparse.Namespace) -> int:
    from sim.batch import dask_executor, run_batch
    from sim.kpis import summary_table, write_kpis_json
    from sim.runner import (
        case_from_network,
        case_from_scenario,
        case_from_sumocfg,
        check_window,
        junction_of,
        known_controllers,
    )

    controllers = args.controllers or ["fixed", "actuated"]
    unknown = [c for c in controllers if c not in known_controllers()]
    if unknown:
        raise ConfigError(
            f"unknown controller {unknown[0]!r}; known: {', '.join(known_controllers())}"
        )
    if args.seeds < 1:
        raise ConfigError("--seeds must be at least 1")
    if args.workers < 1 or (args.dask_local is not None and args.dask_local < 1):
        raise ConfigError("--workers and --dask-local must be at least 1")
    if args.sumocfg is not None:
        if not args.tls:
            raise ConfigError("--sumocfg needs --tls ID")
        case = case_from_sumocfg(args.sumocfg, args.tls, begin_s=args.begin, end_s=args.end,
                                 warmup_s=args.warmup)
    elif args.net is not None:
        if not args.tls:
            raise ConfigError("--net needs --tls ID")
        begin = args.begin or 0.0
        end = args.end if args.end is not None else 3600.0
        warm = args.warmup if args.warmup is not None else min(900.0, (end - begin) / 4)
        case = case_from_network(args.net, _split(args.routes), args.tls, begin_s=begin,
                                 end_s=end, warmup_s=warm,
                                 additional_files=_split(args.additional))
    elif args.scenario:
        case = case_from_scenario(args.scenario)
        if args.begin is not None or args.end is not None or args.warmup is not None:
            case = replace(
                case,
                begin_s=case.begin_s if args.begin is None else args.begin,
                end_s=case.end_s if args.end is None else args.end,
                warmup_s=case.warmup_s if args.warmup is None else args.warmup,
            )
            check_window(case.begin_s, case.end_s, case.warmup_s, args.scenario)
    else:
        raise ConfigError("name a scenario, or give --net/--routes/--tls or --sumocfg/--tls")

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    seeds = list(range(1, args.seeds + 1))
    if args.dask_scheduler or args.dask_local:
        with dask_executor(args.dask_scheduler, args.dask_local or 2) as executor:
            records = run_batch([case], controllers, seeds, out, executor=executor,
                                workers=args.dask_local or args.workers)
    else:
        records = run_batch([case], controllers, seeds, out, workers=args.workers)
    write_kpis_json(records, out / "kpis.json")
    print(summary_table(records))
    if not args.no_report:
        from sim.report import write_report

        model = junction_of(case, out)
        link_groups = {i: g.id for g in model.signals.groups for i in g.links}
        report = write_report(out, records, title=f"{case.label}: controller comparison",
                              link_groups=link_groups, group_order=model.signals.group_ids)
        print(f"report: {report}")
    print(f"kpis:   {out / 'kpis.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
