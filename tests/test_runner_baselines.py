"""The scenario runner with every baseline on the Schlosskreuzung: KPIs, run folders, safety."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
from _collisions import signal_caused_collisions
from _runner_helpers import short_case

from controller.plans import transition
from controller.safety import validate
from sim.batch import run_batch
from sim.demand import list_scenarios, load_scenario, movement_flows
from sim.flows import flow_ratios, group_flows_from_movements
from sim.junction import load_junction
from sim.kpis import RunKpis
from sim.monitor import ConflictMonitor
from sim.runner import case_from_scenario, fixed_time_plan

BASELINES = ("fixed", "actuated", "delay_based", "max-pressure")
MODEL = load_junction("schlosskreuzung")


@pytest.fixture(scope="module")
def baseline_runs(tmp_path_factory: pytest.TempPathFactory) -> list[RunKpis]:
    out = tmp_path_factory.mktemp("baselines")
    return run_batch([short_case(end_s=900.0)], BASELINES, [1], out, workers=2,
                     log=lambda _msg: None)


@pytest.mark.sumo
def test_every_baseline_runs_and_reports_kpis(baseline_runs: list[RunKpis]) -> None:
    assert [r.controller for r in baseline_runs] == list(BASELINES)
    for r in baseline_runs:
        assert r.scenario == "morning_peak" and r.seed == 1
        assert r.vehicle_delay_s is not None and 0 < r.vehicle_delay_s < 600
        assert r.vehicles_completed > 100
        assert r.throughput_veh_h > 0
        assert r.co2_kg > 0
        # SUMO's junction collision check ran; what it found, the signals did not cause.
        assert signal_caused_collisions(Path(r.run_dir), MODEL) == []
        run_dir = Path(r.run_dir)
        for name in ("tripinfo.xml", "tls_states.xml", "queues.csv", "run.json"):
            assert (run_dir / name).stat().st_size > 0, name


@pytest.mark.sumo
def test_every_second_of_every_baseline_passed_the_conflict_monitor(
    baseline_runs: list[RunKpis],
) -> None:
    for r in baseline_runs:
        info = json.loads((Path(r.run_dir) / "run.json").read_text())
        assert info["monitor_faults"] == [], (r.controller, info["monitor_faults"][:3])
        assert info["sim_seconds"] == 900


@pytest.mark.sumo
def test_logged_signal_states_pass_an_independent_replay(baseline_runs: list[RunKpis]) -> None:
    """SUMO's own log of what the lights showed (SaveTLSStates), replayed through a fresh
    monitor: intergreens, minimum greens, yellow and conflicts hold for every baseline,
    SUMO's actuated and delay-based logics included."""
    model = load_junction("schlosskreuzung")
    first = {g.id: g.links[0] for g in model.signals.groups}
    to_state = {"G": "G", "g": "G", "y": "y", "u": "u", "r": "r"}
    for r in baseline_runs:
        monitor = ConflictMonitor(model.signals)
        faults = []
        seconds = 0
        for line in (Path(r.run_dir) / "tls_states.xml").read_text().splitlines():
            m = re.search(r'state="([A-Za-z]+)"', line)
            if m is None:
                continue
            state = m.group(1)
            faults += monitor.observe({g: to_state[state[i]] for g, i in first.items()})
            seconds += 1
        assert seconds >= 890
        assert faults == [], (r.controller, faults[:3])


@pytest.mark.parametrize("scenario", list_scenarios())
def test_fixed_plans_are_safe_and_follow_webster(scenario: str) -> None:
    case = case_from_scenario(scenario)
    model = load_junction(case.junction_dir or "schlosskreuzung")
    webster, program = fixed_time_plan(case, model, ())
    assert validate(model.signals, program) == ()
    # Webster's formula, computed here from the scenario's declared flows.
    flows = group_flows_from_movements(model, movement_flows(load_scenario(scenario)))
    ratios = flow_ratios(model, flows)
    seq = webster.plan.sequence
    signals = model.signals
    y = [
        max((ratios.get(g, 0.0) for g in signals.stage(s).groups
             if signals.group(g).is_vehicular), default=0.0)
        for s in seq
    ]
    lost = sum(transition(signals, seq[k], seq[(k + 1) % len(seq)],
                          since_end_s={g: signals.early_end(g)
                                       for g in signals.stage(seq[k]).groups
                                       - signals.stage(seq[(k + 1) % len(seq)]).groups
                                       if signals.early_end(g)}).length_s
               for k in range(len(seq)))
    assert webster.lost_time_s == lost
    assert webster.stage_flow_ratios == pytest.approx(y)
    mins = [max(signals.group(g).min_green_s + signals.early_end(g)
                for g in signals.stage(s).groups) for s in seq]
    if sum(y) < 0.95:
        c0 = (1.5 * lost + 5) / (1 - sum(y))
        expected_cycle = min(signals.max_cycle_s, max(signals.min_cycle_s, lost + sum(mins),
                                                      round(c0)))
    else:
        expected_cycle = signals.max_cycle_s
    assert lost + sum(webster.plan.greens_s) == expected_cycle
    # Splits: proportional to y where no minimum green binds (within rounding).
    free = [k for k in range(len(seq)) if webster.plan.greens_s[k] > mins[k]]
    if len(free) >= 2:
        available = expected_cycle - lost - sum(webster.plan.greens_s[k]
                                                 for k in range(len(seq)) if k not in free)
        weight = sum(y[k] for k in free)
        for k in free:
            assert math.isclose(webster.plan.greens_s[k], available * y[k] / weight, abs_tol=1.0)


@pytest.mark.parametrize("scenario", list_scenarios())
def test_the_optimised_fixed_plan_is_safe_and_no_worse_than_webster_by_the_model(
    scenario: str,
) -> None:
    from controller.optimiser import analytic_delay_s
    from sim.flows import count_demand
    from sim.hardware import SignalController

    case = case_from_scenario(scenario)
    model = load_junction(case.junction_dir or "schlosskreuzung")
    _, webster = fixed_time_plan(case, model, ())
    _, optimised = fixed_time_plan(case, model, (), optimised=True)
    assert validate(model.signals, optimised) == ()
    # The hardware takes it as its stored program (its own, independent check).
    SignalController(model.signals, optimised)
    flows = group_flows_from_movements(model, movement_flows(load_scenario(scenario)))
    demand = count_demand(model, flows)
    before = analytic_delay_s(model.signals, webster, demand)
    after = analytic_delay_s(model.signals, optimised, demand)
    assert after <= before + 1e-9
    assert optimised.cycle_s <= model.signals.max_cycle_s
    if optimised.id != webster.id:
        assert optimised.id.startswith(f"optimised-{scenario}-")
        assert after < before


def test_the_optimised_fixed_plan_leads_the_heavier_left_turn_when_that_pays() -> None:
    from controller.optimiser import Demand, engineered_plan

    case = case_from_scenario("evening_peak")
    model = load_junction("schlosskreuzung")
    _, webster = fixed_time_plan(case, model, ())
    # The north arm far heavier in through and left traffic than the south arm.
    flows = {"K1": 700.0, "K2": 300.0, "K3": 250.0, "K4": 60.0,
             "K5": 300.0, "K6": 80.0, "K7": 250.0, "K8": 60.0}
    demand = {g: Demand(q, 1700.0 if g in ("K2", "K4", "K6", "K8") else 3400.0)
              for g, q in flows.items()}
    found = engineered_plan(model.signals, demand, webster)
    assert found.label.startswith("overlap-") and "P2N" in found.label
    assert found.program.stage_plan is not None
    assert "P2N" in found.program.stage_plan.sequence
    assert engineered_plan(model.signals, demand, webster) == found  # deterministic
    with pytest.raises(ValueError, match="needs a stage plan"):
        engineered_plan(model.signals, demand, dataclasses.replace(webster, stage_plan=None))
