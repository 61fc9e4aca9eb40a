"""Overlap stages (leading left turns): configuration, compilation, candidates.

An overlap stage joins two consecutive stages of the basic cycle: P2N = K1 K2 R1
lets the north arm keep its through green while its left turn starts, between
P1 (N/S through) and P2 (N/S lefts).  These tests hold the rules that make that
safe and useful: it never enters the basic cycle, it is checked like any stage,
programs with it pass the validator and the independent monitor, and the
optimiser offers it for the heavier arm only.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest
from _runner_helpers import short_case
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_optimiser_candidates import by_label, estimate, fallback_for

from controller.messages import AckStatus, PlanAck, PlanCommand
from controller.optimiser import overlap_sequences, propose
from controller.plans import StagePlan, compile_plan, lost_time_s
from controller.safety import validate, validate_switch
from controller.signals import JunctionSignals, Stage
from controller.webster import OVERLAP_MIN_GREEN_S, stage_min_greens
from sim.drivers import FixedTimeDriver, SignalDriver
from sim.hardware import SignalController
from sim.junction import ConfigError, load_junction
from sim.monitor import check_program
from sim.runner import case_from_scenario, fixed_time_plan, run_one

BASIC = ("P1", "P2", "P3", "P4")
#: Asymmetric turning's demand (veh/h): the north arm heavier in both movements.
NORTH_HEAVY = {"K1": 390.0, "K2": 300.0, "K3": 310.0, "K4": 220.0,
               "K5": 160.0, "K6": 210.0, "K7": 160.0, "K8": 60.0}


@pytest.fixture(scope="module")
def sk() -> JunctionSignals:
    return load_junction("schlosskreuzung").signals


def test_the_basic_cycle_has_no_overlap_stage(sk: JunctionSignals) -> None:
    assert tuple(s.id for s in sk.stages) == BASIC
    assert {s.id for s in sk.overlap_stages} == {"P2N", "P2S", "P4W", "P4E"}
    assert sk.stage("P2N").groups == {"K1", "K2", "R1"}
    assert sk.overlap_position("P2N", BASIC) == [True, False, False, False]
    assert sk.overlap_position("P4E", BASIC) == [False, False, True, False]


def test_an_overlap_stage_must_join_two_consecutive_stages(sk: JunctionSignals) -> None:
    # K1 with K4 releases a conflicting pair; K2 with K6 belongs to no two neighbours.
    with pytest.raises(ValueError, match="stage PX releases conflicting groups K1 and K4"):
        dataclasses.replace(sk, overlap_stages=(Stage("PX", frozenset({"K1", "K4"})),))
    with pytest.raises(ValueError, match="overlap stage PY carries groups of no two"):
        dataclasses.replace(sk, overlap_stages=(Stage("PY", frozenset({"K2", "K6"})),))
    with pytest.raises(ValueError, match="duplicate stage ids"):
        dataclasses.replace(sk, overlap_stages=(Stage("P1", frozenset({"K1", "K2"})),))


def test_a_bad_overlap_stage_stops_loading_with_the_file_named(tmp_path: Path) -> None:
    src = Path(__file__).resolve().parents[1] / "scenarios" / "schlosskreuzung"
    dst = tmp_path / "schlosskreuzung"
    shutil.copytree(src, dst)
    toml = dst / "junction.toml"
    toml.write_text(toml.read_text().replace('P2N = ["K1", "K2", "R1"]', 'P2N = ["K1", "K9"]'))
    with pytest.raises(ConfigError, match=r"\[overlap_stages\] P2N: unknown groups \['K9'\]"):
        load_junction(dst)
    toml.write_text(toml.read_text().replace('P2N = ["K1", "K9"]', 'P2N = ["K1", "K4"]'))
    with pytest.raises(ConfigError, match=r"junction\.toml.*P2N releases conflicting"):
        load_junction(dst)


def test_a_leading_left_turn_compiles_to_overlapping_greens(sk: JunctionSignals) -> None:
    seq = ("P1", "P2N", "P2", "P3", "P4")
    mins = stage_min_greens(sk, seq)
    # The overlap stage's groups all run on from P1 or into P2: only its own floor counts.
    assert mins[1] == OVERLAP_MIN_GREEN_S
    assert mins[2] == stage_min_greens(sk, BASIC)[1]
    prog = compile_plan(sk, StagePlan(seq, (20, 5, 12, 26, 10)), "lead-north")
    (k1,), (k2,), (k3,), (k4,) = (prog.greens[g] for g in ("K1", "K2", "K3", "K4"))
    assert k1[0] == k3[0] == 0
    assert k1[1] > k3[1]                       # the north through runs on ...
    assert k2[0] < k4[0]                       # ... while its left turn leads
    assert k2[0] - k3[1] >= sk.z("K3", "K2")   # after the south through's intergreen
    assert k4[0] - k1[1] >= sk.z("K1", "K4")   # and the south left after the north through's
    assert k2[1] == k4[1]
    assert validate(sk, prog) == ()
    assert check_program(sk, prog) == []
    # One more transition than the basic cycle: the price the optimiser weighs.
    assert lost_time_s(sk, seq) > lost_time_s(sk, BASIC)


def test_the_optimiser_leads_the_heavier_arm(sk: JunctionSignals) -> None:
    ratios = {g: q / 1800.0 for g, q in NORTH_HEAVY.items()}
    assert [label for label, _ in overlap_sequences(sk, BASIC, ratios)] == [
        "overlap-P2N", "overlap-P4W", "overlap-P2N+P4W"]
    south = {**ratios, "K3": ratios["K1"], "K1": ratios["K3"], "K4": ratios["K2"],
             "K2": ratios["K4"]}
    assert overlap_sequences(sk, BASIC, south)[0] == ("overlap-P2S",
                                                      ("P1", "P2S", "P2", "P3", "P4"))


def test_a_leading_left_turn_is_offered_valid_and_cheaper_by_the_model(
    sk: JunctionSignals,
) -> None:
    fb = fallback_for(sk, BASIC, cycle=110)
    cands = by_label(propose(sk, estimate(sk, NORTH_HEAVY), fb, fb))
    lead = cands["overlap-P2N"]
    assert lead.program.stage_plan is not None
    assert lead.program.stage_plan.sequence == ("P1", "P2N", "P2", "P3", "P4")
    # Both arms' demand is asymmetric in the same direction: the overlap saves delay.
    assert lead.analytic_delay_s < cands["delay-optimal"].analytic_delay_s
    assert validate(sk, lead.program, previous=fb) == ()
    assert validate_switch(sk, lead.program, fb) == ()
    # Without overlap stages in the configuration nothing of the kind is offered.
    plain = dataclasses.replace(sk, overlap_stages=())
    assert not any(c.label.startswith("overlap")
                   for c in propose(plain, estimate(plain, NORTH_HEAVY), fb, fb))


SK = load_junction("schlosskreuzung").signals
SK_FALLBACK = fallback_for(SK, BASIC, cycle=100)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flows=st.fixed_dictionaries({g: st.floats(0.0, 700.0) for g in NORTH_HEAVY}),
       from_overlap=st.booleans())
def test_overlap_candidates_are_safe_from_and_to_any_plan(
    flows: dict[str, float], from_overlap: bool
) -> None:
    est = estimate(SK, flows)
    running = SK_FALLBACK
    if from_overlap:
        first = [c for c in propose(SK, est, SK_FALLBACK, SK_FALLBACK)
                 if c.label.startswith("overlap")]
        if first:
            running = first[0].program
    for c in propose(SK, est, running, SK_FALLBACK):
        plan = c.program.stage_plan
        assert plan is not None
        assert plan.sequence[0] == "P1"
        assert all(g >= m for g, m in
                   zip(plan.greens_s, stage_min_greens(SK, plan.sequence), strict=True))
        assert validate(SK, c.program, previous=running) == ()
        if c.label.startswith("overlap"):
            # Built with the maximum-red rows of the switch back (the core's gate checks
            # every candidate's switch back; docs/optimiser.md, Limits).
            assert validate_switch(SK, c.program, SK_FALLBACK) == ()


def test_a_fallback_with_a_leading_left_turn_keeps_every_candidate_in_its_structure() -> None:
    """A cabinet may store a plan with an overlap stage (fixed-optimised, evening peak): the
    optimiser works on that sequence, and every candidate switches safely both ways."""
    case = case_from_scenario("evening_peak")
    model = load_junction("schlosskreuzung")
    _, fb = fixed_time_plan(case, model, (), optimised=True)
    assert fb.stage_plan is not None and "P2S" in fb.stage_plan.sequence
    flows = {"K1": 600.0, "K2": 150.0, "K3": 700.0, "K4": 250.0,
             "K5": 300.0, "K6": 120.0, "K7": 200.0, "K8": 80.0}
    cands = propose(model.signals, estimate(model.signals, flows), fb, fb)
    assert len(cands) >= 8
    assert "fallback" in by_label(cands)
    for c in cands:
        plan = c.program.stage_plan
        assert plan is not None
        assert plan.sequence[:2] == ("P1", "P2S"), c.label
        assert validate(model.signals, c.program, previous=fb) == (), c.label
        assert validate_switch(model.signals, c.program, fb) == (), c.label


@pytest.mark.sumo
def test_sumo_runs_a_leading_left_turn_pushed_to_the_hardware(tmp_path: Path) -> None:
    """The hardware accepts the plan after its own checks, and SUMO shows what it says:
    the north through and the north left green together while the south arm stands."""
    sk = load_junction("schlosskreuzung").signals
    seq = ("P1", "P2N", "P2", "P3", "P4")
    program = compile_plan(sk, StagePlan(seq, (20, 6, 12, 26, 10)), "lead-north")
    hardware: list[SignalController] = []
    acks: list[PlanAck] = []

    def probe(driver: SignalDriver) -> SignalDriver:
        # The fixed-time driver's hardware, holding the Webster plan as its fallback, gets
        # the leading-left-turn plan pushed as the adaptive controller would push it.
        assert isinstance(driver, FixedTimeDriver)
        cmd = PlanCommand(program=program, issued=0.0, valid_from=0.0, lease_s=1e6, seq=1)
        acks.append(driver.hardware.submit(cmd, 0.0))
        hardware.append(driver.hardware)
        return driver

    kpis = run_one(short_case("asymmetric_turning", end_s=600.0, warmup_s=120.0), "fixed", 1,
                   tmp_path, progress=False, probe=probe)
    assert acks[0].status is AckStatus.ACCEPTED, acks[0].reason
    assert hardware[0].running.id == "lead-north"
    info = json.loads((Path(kpis.run_dir) / "run.json").read_text())
    assert info["monitor_faults"] == []
    assert kpis.vehicles_completed > 50
    first = {g.id: g.links[0] for g in sk.groups}
    overlap_seconds = 0
    for line in (Path(kpis.run_dir) / "tls_states.xml").read_text().splitlines():
        m = re.search(r'state="([A-Za-z]+)"', line)
        if m is None:
            continue
        lit = {g for g, i in first.items() if m.group(1)[i] in "Gg"}
        if {"K1", "K2"} <= lit:
            assert not lit & {"K3", "K4"}
            overlap_seconds += 1
    # 6 s of overlap stage per 112 s cycle at least, over 600 s.
    assert overlap_seconds >= 4 * 6
