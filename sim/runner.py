"""The scenario runner: (case, controller, seed) -> KPIs, and batches of those.

A *case* is everything that defines the traffic: a Schlosskreuzung scenario
(``scenarios/<name>.toml``), or any SUMO network with route files, or an
engineer's ``.sumocfg``.  ``run_one`` is a pure function of its arguments
(it writes only into its own run folder), so batches can run on any
``concurrent.futures`` executor: a local process pool, or Dask distributed.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from controller.errors import ConfigError
from controller.optimiser import engineered_plan
from controller.plans import SignalProgram, compile_plan
from controller.webster import WebsterResult, webster_plan
from sim import drivers
from sim.drivers import NATIVE_TYPES, DriverContext, SignalDriver, make_driver
from sim.field import FieldRun, print_progress, simulate
from sim.flows import (
    count_demand,
    flow_ratios,
    group_flows_from_movements,
    group_flows_from_routes,
)
from sim.junction import JunctionModel, derive_junction, load_junction
from sim.kpis import (
    RunKpis,
    compute_kpis,
    kpi_sumo_args,
    tls_states_additional,
    vtype_classes_from_xml,
)
from sim.tlsprogram import write_native_program

REPO_ROOT = Path(__file__).resolve().parent.parent
SCENARIO_ROOT = REPO_ROOT / "scenarios"


@dataclass(frozen=True)
class Case:
    """The traffic side of a run: network, demand, time window (plain data, picklable)."""

    label: str
    net_file: Path
    tls_id: str
    begin_s: float
    end_s: float
    warmup_s: float
    junction_dir: Path | None = None
    scenario_path: Path | None = None
    route_files: tuple[Path, ...] = ()
    additional_files: tuple[Path, ...] = ()
    sumocfg: Path | None = None


def case_from_scenario(name_or_path: str | Path) -> Case:
    """A Schlosskreuzung-style scenario: ``scenarios/<name>.toml`` or a path to one."""
    from sim.demand import load_scenario

    scenario = load_scenario(name_or_path, SCENARIO_ROOT)
    junction_dir = scenario.path.parent / scenario.junction
    if not junction_dir.is_dir():
        junction_dir = SCENARIO_ROOT / scenario.junction
    model = load_junction(junction_dir)
    return Case(
        label=scenario.name,
        net_file=model.net_file,
        tls_id=model.signals.tls_id,
        begin_s=scenario.begin_s,
        end_s=scenario.end_s,
        warmup_s=scenario.warmup_s,
        junction_dir=junction_dir,
        scenario_path=scenario.path,
    )


def case_from_network(
    net_file: Path,
    route_files: tuple[Path, ...],
    tls_id: str,
    *,
    begin_s: float,
    end_s: float,
    warmup_s: float,
    additional_files: tuple[Path, ...] = (),
) -> Case:
    """Any SUMO network: signal groups, conflicts and intergreens are derived from it."""
    for path, what in [(net_file, "network"), *((r, "route file") for r in route_files)]:
        if not Path(path).is_file():
            raise ConfigError(f"{what} not found", path)
    if not route_files:
        raise ConfigError("no route files given (--routes FILE[,FILE])")
    check_window(begin_s, end_s, warmup_s, net_file)
    derive_junction(Path(net_file), tls_id, additional_files=additional_files)  # fail early
    return Case(
        label=Path(net_file).name.split(".")[0],
        net_file=Path(net_file).resolve(),
        tls_id=tls_id,
        begin_s=begin_s,
        end_s=end_s,
        warmup_s=warmup_s,
        route_files=tuple(Path(r).resolve() for r in route_files),
        additional_files=tuple(Path(a).resolve() for a in additional_files),
    )


def case_from_sumocfg(
    sumocfg: Path,
    tls_id: str,
    *,
    begin_s: float | None = None,
    end_s: float | None = None,
    warmup_s: float | None = None,
) -> Case:
    """An engineer's SUMO configuration; its inputs and processing options are honoured."""
    cfg = Path(sumocfg)
    if not cfg.is_file():
        raise ConfigError("SUMO configuration not found", cfg)
    try:
        root = ET.parse(cfg).getroot()
    except ET.ParseError as exc:
        raise ConfigError(f"malformed SUMO configuration: {exc}", cfg) from None

    def option(name: str) -> str | None:
        for elem in root.iter(name):
            value = elem.get("value")
            if value is not None:
                return value
        return None

    base = cfg.parent
    net = option("net-file")
    if net is None:
        raise ConfigError("the configuration names no net-file", cfg)
    routes = tuple(base / r for r in (option("route-files") or "").replace(",", " ").split())
    adds = tuple(base / a for a in (option("additional-files") or "").replace(",", " ").split())
    begin = float(option("begin") or 0) if begin_s is None else begin_s
    end = float(option("end") or 3600) if end_s is None else end_s
    warm = min(900.0, (end - begin) / 4) if warmup_s is None else warmup_s
    case = case_from_network(
        base / net, routes, tls_id, begin_s=begin, end_s=end, warmup_s=warm,
        additional_files=adds,
    ) if routes else None
    if case is None:
        raise ConfigError("the configuration names no route-files", cfg)
    return replace(case, label=cfg.name.split(".")[0], sumocfg=cfg.resolve())


def check_window(begin_s: float, end_s: float, warmup_s: float, where: Path | str) -> None:
    if not end_s > begin_s:
        raise ConfigError(f"end ({end_s}) must be after begin ({begin_s})", where)
    if not 0 <= warmup_s < end_s - begin_s:
        raise ConfigError(f"warm-up ({warmup_s} s) must lie inside the time window", where)


def junction_of(case: Case, run_dir: Path | None = None) -> JunctionModel:
    if case.junction_dir is not None:
        return load_junction(case.junction_dir)
    return derive_junction(
        case.net_file, case.tls_id, additional_files=case.additional_files, out_dir=run_dir
    )


def fixed_time_plan(
    case: Case, model: JunctionModel, route_files: tuple[Path, ...], *, optimised: bool = False
) -> tuple[WebsterResult, SignalProgram]:
    """The Webster-tuned fixed-time plan for the case's known demand (measured window).

    ``optimised``: instead, the plan the delay model finds best for the same count,
    leading left turns included (``controller.optimiser.engineered_plan``): the
    ``fixed-optimised`` baseline.
    """
    begin = case.begin_s + case.warmup_s
    if case.scenario_path is not None:
        from sim.demand import load_scenario, movement_flows

        scenario = load_scenario(case.scenario_path)
        flows = group_flows_from_movements(model, movement_flows(scenario))
    else:
        flows = group_flows_from_routes(model, route_files, begin, case.end_s)
    sequence = tuple(s.id for s in model.signals.stages)
    result = webster_plan(model.signals, sequence, flow_ratios(model, flows))
    program = compile_plan(model.signals, result.plan, f"webster-{case.label}")
    if optimised:
        program = engineered_plan(model.signals, count_demand(model, flows), program,
                                  program_prefix=f"optimised-{case.label}").program
    return result, program


def run_dir_for(out_dir: Path, case: Case, controller: str, seed: int) -> Path:
    return Path(out_dir) / "runs" / f"{case.label}__{controller}__seed{seed}"


def run_one(
    case: Case, controller: str, seed: int, out_dir: Path, progress: bool = True,
    *, probe: Callable[[SignalDriver], SignalDriver] | None = None,
) -> RunKpis:
    """Run one (case, controller, seed) and return its KPIs; writes only into its run folder.

    ``probe`` wraps the controller's driver, for evaluation scripts that watch the
    ground truth alongside it (``bench/lane_discharge.py``).
    """
    run_dir = run_dir_for(out_dir, case, controller, seed).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    model = junction_of(case, run_dir)
    occupancy: dict[str, float] = {}
    route_files = case.route_files
    extra_adds: tuple[Path, ...] = ()
    if case.scenario_path is not None:
        from sim.demand import load_scenario, person_occupancy, write_demand

        scenario = load_scenario(case.scenario_path)
        demand = write_demand(scenario, seed, run_dir, net_file=model.net_file)
        route_files = demand.route_files
        extra_adds = demand.additional_files
        occupancy = person_occupancy(scenario)
    webster, program = fixed_time_plan(case, model, route_files,
                                       optimised=controller == drivers.FIXED_OPTIMISED)
    adds = (*model.additional_files, *case.additional_files, *extra_adds)
    adds = (*adds, tls_states_additional(run_dir, model.signals.tls_id))
    native = NATIVE_TYPES.get(controller)
    native_id = None
    if native is not None:
        native_id = f"atsc_{native}"
        adds = (*adds, write_native_program(
            run_dir / "native_program.add.xml", model.signals, program,
            logic_type=native, program_id=native_id, detectors=_actuation_loops(model),
            minor_links=model.minor_links,
        ))
    # Read before the driver and the run exist: a malformed file fails now, leaking
    # nothing, not after an hour of simulation.
    vtype_classes = vtype_classes_from_xml(
        (*model.additional_files, *case.additional_files, *route_files, *extra_adds))
    ctx = DriverContext(model=model, fixed_program=program,
                        sequence=webster.plan.sequence, run_dir=str(run_dir), seed=seed)
    driver = make_driver(controller, ctx)
    if probe is not None:
        driver = probe(driver)
    run = FieldRun(
        net_file=model.net_file, route_files=route_files, additional_files=adds,
        begin_s=case.begin_s, end_s=case.end_s, seed=seed, run_dir=run_dir,
        sumocfg=case.sumocfg, native_program=native_id,
    )
    label = f"{case.label}/{controller}/seed{seed}"
    result = simulate(run, model, driver, kpi_sumo_args(run_dir),
                      progress=print_progress(label) if progress else None)
    kpis = compute_kpis(
        run_dir, scenario=case.label, controller=controller, seed=seed,
        warmup_s=case.begin_s + case.warmup_s, end_s=case.end_s, occupancy=occupancy,
        wall_time_s=result.wall_time_s,
        vtype_classes=vtype_classes,
    )
    (run_dir / "run.json").write_text(json.dumps({
        "case": {k: str(v) for k, v in asdict(case).items()},
        "controller": controller,
        "seed": seed,
        "fixed_program": program.to_json(),
        "webster": {
            "cycle_s": webster.cycle_s, "lost_time_s": webster.lost_time_s,
            "stage_flow_ratios": webster.stage_flow_ratios,
            "total_flow_ratio": webster.total_flow_ratio, "saturated": webster.saturated,
        },
        "monitor_faults": result.monitor_faults,
        "collisions_seen": result.collisions_seen,
        "driver": result.driver_stats,
        "wall_time_s": result.wall_time_s,
        "sim_seconds": result.sim_seconds,
    }, indent=2, default=str))
    return kpis


def _actuation_loops(model: JunctionModel) -> dict[str, str]:
    """Incoming lane -> our stop-line loop on it, for SUMO's actuated logic."""
    from controller.messages import DetectorKind

    out: dict[str, str] = {}
    for d in model.detectors:
        if d.kind is DetectorKind.STOP_LINE and d.lanes:
            out[d.lanes[-1]] = d.id
    return out


def known_controllers() -> tuple[str, ...]:
    return drivers.driver_names()
