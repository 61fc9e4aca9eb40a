"""The adaptive controller in a real scenario run, and the proof that it sees only detector data.

One short closed-loop run of the ``adaptive`` driver on the Schlosskreuzung
(morning peak, 900 s) is recorded: every message the core received through
the transport and every command it issued.  Then

- the recorded messages are replayed into a fresh core with a fresh twin and
  no field simulation at all: the same plan commands come out, so nothing but
  those messages (detector readings, hardware states, acks) decided them;
- the core's object graph, walked during the run, holds no reference to
  libsumo/traci, the field's objects, the simulated hardware or the driver;
- the twin's simulations ran in other processes than the field;
- the run had no conflict monitor fault, no collision the signals caused, and
  the hardware accepted the core's plans.
"""

from __future__ import annotations

import gc
import json
import os
import types
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from _collisions import signal_caused_collisions

from controller.adaptive import AdaptiveConfig, AdaptiveCore, Outcome
from controller.messages import DetectorReading, HardwareState, PlanAck
from controller.optimiser import capacity_check, propose
from controller.transport import Journal, Received, Scored, replay
from controller.twin import SnapshotBuilder, SumoTwin
from sim import drivers
from sim.adaptive_driver import (
    TWIN_HORIZON_S,
    AdaptiveDriver,
    OracleDriver,
    perception_for,
    twin_parts,
)
from sim.drivers import DriverContext
from sim.junction import JunctionModel
from sim.kpis import RunKpis
from sim.runner import case_from_scenario, junction_of, run_dir_for, run_one
from sim.twin_config import twin_config_from_model

pytestmark = [pytest.mark.sumo, pytest.mark.slow]

WINDOW_S = 900.0
SEED = 1
#: Modules and objects that are the field simulation or sit next to it.
FIELD_MODULES = ("libsumo", "traci", "sim.field", "sim.detectors", "sim.hardware", "sim.runner")


# -- walking the object graph ----------------------------------------------------------


def _reachable(root: object) -> Iterator[object]:
    """Every object reachable from ``root`` through data references.

    Modules, classes and functions' globals are code, not state: they are
    yielded (so a held module shows up) but not entered, or every object would
    reach every module through ``sys.modules``.  Closures, defaults and bound
    ``self`` are state and are entered.
    """
    seen = {id(root)}
    stack: list[object] = [root]
    while stack:
        obj = stack.pop()
        yield obj
        if isinstance(obj, (types.ModuleType, type)):
            continue
        if isinstance(obj, types.FunctionType):
            refs: list[object] = [
                *(c.cell_contents for c in obj.__closure__ or () if _filled(c)),
                *(obj.__defaults__ or ()),
                *(obj.__kwdefaults__ or {}).values(),
            ]
        elif isinstance(obj, types.CodeType):
            continue
        else:
            refs = list(gc.get_referents(obj))
        for ref in refs:
            if id(ref) not in seen:
                seen.add(id(ref))
                stack.append(ref)


def _filled(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True


def field_references(root: object, forbidden: Sequence[object] = ()) -> list[str]:
    """What in ``root``'s object graph belongs to the field side (empty: nothing)."""
    banned = {id(o) for o in forbidden}
    found: list[str] = []
    for obj in _reachable(root):
        if id(obj) in banned:
            found.append(f"{type(obj).__name__} object")
        elif isinstance(obj, types.ModuleType):
            if obj.__name__.split(".")[0] in ("libsumo", "traci") or obj.__name__ in FIELD_MODULES:
                found.append(f"module {obj.__name__}")
        elif not isinstance(obj, type):
            module = type(obj).__module__
            if module.split(".")[0] in ("libsumo", "traci") or module in FIELD_MODULES:
                found.append(f"{module}.{type(obj).__name__} instance")
        if len(found) > 20:
            break
    return found


def test_the_walker_finds_a_field_handle_when_there_is_one() -> None:
    """The walk can fail: a held libsumo module, a closure over it, a hardware object."""
    import libsumo

    from sim.hardware import SignalController

    @dataclass
    class Holder:
        inner: Any

    assert field_references(Holder([{"x": libsumo}])) == ["module libsumo"]
    def sneaky() -> Any:
        return libsumo

    assert "module libsumo" in field_references(Holder(sneaky))
    model = junction_of(case_from_scenario("morning_peak"))
    from sim.runner import fixed_time_plan

    _, program = fixed_time_plan(case_from_scenario("morning_peak"), model, ())
    hw = SignalController(model.signals, program)
    assert any("SignalController" in f for f in field_references(Holder(hw)))
    assert field_references(Holder(program)) == []


# -- the recorded run --------------------------------------------------------------------


@dataclass
class Recorded:
    case_label: str
    model: JunctionModel
    kpis: RunKpis
    run_dir: Path
    journal: Journal
    fallback: Any
    stats: Mapping[str, Any]
    decisions: list[Any]
    references: list[str] = field(default_factory=list)
    twin_pids: tuple[int, ...] = ()
    walked: bool = False


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    out = tmp_path_factory.mktemp("adaptive")
    journal = Journal()
    probe: dict[str, Any] = {}

    class Probe(AdaptiveDriver):
        """The ``adaptive`` driver with a journal, and a look at the core mid-run."""

        def step(self, now: float, readings: Sequence[DetectorReading]) -> Mapping[str, str]:
            states = super().step(now, readings)
            if "references" not in probe and self.core.stats.plans_pushed >= 1:
                probe["references"] = field_references(
                    self.core, forbidden=(self, self.hardware, self.transport, journal)
                )
                twin = self.core.evaluator
                probe["twin_pids"] = twin.worker_pids() if isinstance(twin, SumoTwin) else ()
            return states

    def factory(ctx: DriverContext) -> Probe:
        driver = Probe(ctx, journal=journal)
        probe["driver"] = driver
        return driver

    case = case_from_scenario("morning_peak")
    case = replace(case, end_s=case.begin_s + WINDOW_S, warmup_s=300.0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(drivers._REGISTRY, "adaptive-recorded", factory)
        kpis = run_one(case, "adaptive-recorded", SEED, out, progress=False)
    driver: Probe = probe["driver"]
    run_dir = run_dir_for(out, case, "adaptive-recorded", SEED)
    import json

    run = json.loads((run_dir / "run.json").read_text())
    yield Recorded(
        case_label=case.label,
        model=driver.model,
        kpis=kpis,
        run_dir=run_dir,
        journal=journal,
        fallback=driver.core.fallback,
        stats={**run["driver"], "monitor_faults_list": run["monitor_faults"],
               "collisions_seen": run["collisions_seen"]},
        decisions=list(driver.decisions),
        references=probe.get("references", ["(the core never pushed a plan: no walk)"]),
        twin_pids=probe.get("twin_pids", ()),
        walked="references" in probe,
    )


def test_end_to_end_adaptive_run_plans_accepted_no_faults(recorded: Recorded) -> None:
    s = recorded.stats
    assert s["evaluator"].startswith("twin"), s
    assert s["monitor_faults_list"] == [] and s["monitor_faults"] == 0
    assert s["decision_failures"] == 0, [d.reason for d in recorded.decisions][:3]
    assert isinstance(s["plans_accepted_by_hardware"], int)
    assert s["plans_accepted_by_hardware"] >= 1
    assert s["rejected_by_hardware"] == 0, s["hardware_reject_reasons"]
    assert s["decisions"] >= WINDOW_S / 120 - 1  # one per cycle, cycles up to 120 s
    assert recorded.kpis.vehicle_delay_s is not None
    caused = signal_caused_collisions(recorded.run_dir, recorded.model)
    assert caused == [], caused
    # decisions.jsonl is written for engineers: one line per decision.
    lines = (recorded.run_dir / "decisions.jsonl").read_text().splitlines()
    assert len(lines) == s["decisions"]
    rows = [json.loads(line) for line in lines]
    scored = [c for r in rows for c in r["candidates"] if c["person_delay_s"] is not None]
    assert scored and all(c["pedestrian_delay_s"] is not None for c in scored)
    # The floor is a policy, off by default: nothing may be refused for it.
    assert AdaptiveConfig().pedestrian_slack_s is None
    assert s["below_pedestrian_floor"] == 0
    assert not [c for c in scored if c["refused"]]


def test_replay_of_the_messages_alone_reproduces_every_plan_command(recorded: Recorded) -> None:
    issued = recorded.journal.commands
    assert any(d.outcome is Outcome.PUSHED for d in recorded.decisions)
    assert issued, "the run issued no command: nothing to reproduce"
    # Everything the core got is a wire message; nothing else passed.
    for entry in recorded.journal.entries:
        if isinstance(entry, Received):
            assert all(isinstance(m, (DetectorReading, HardwareState, PlanAck))
                       for m in entry.messages)
    parts = twin_parts(recorded.model)
    try:
        # Built as the driver builds its core: the same parts, the capacity rule on the
        # running plan included (a retirement the replay could not make would diverge).
        fresh = AdaptiveCore(
            recorded.model.signals, recorded.fallback,
            perception=perception_for(recorded.model, parts.snapshots),
            proposer=parts.proposer, evaluator=parts.evaluator,
            running_check=parts.running_check,
        )
        assert not _simulation_loaded()
        # rescore: the fresh twin scores every job's snapshot again; the recorded
        # scores are not used.
        again = replay(fresh, recorded.journal, rescore=True)
        assert not _simulation_loaded()
    finally:
        parts.close()
    assert again == issued
    # The journal also records each decision's scores (split decisions): a replay
    # without any twin reproduces the same commands from them.
    scored = [e for e in recorded.journal.entries if isinstance(e, Scored)]
    assert scored and all(e.scores for e in scored)
    twinless = AdaptiveCore(
        recorded.model.signals, recorded.fallback,
        perception=perception_for(recorded.model, SnapshotBuilder(
            twin_config_from_model(recorded.model, horizon_s=TWIN_HORIZON_S))),
        proposer=propose, evaluator=_NoTwin(), running_check=capacity_check,
    )
    assert replay(twinless, recorded.journal) == issued


class _NoTwin:
    def evaluate(self, snapshot: Any, programs: Sequence[Any]) -> list[Any]:
        raise AssertionError("a replay from recorded scores must not evaluate")


def _simulation_loaded() -> bool:
    """Whether a SUMO simulation is loaded in this process (the field would be one)."""
    import libsumo

    try:
        libsumo.simulation.getTime()
    except libsumo.FatalTraCIError:
        return False
    return True


def test_the_core_holds_no_handle_to_the_field(recorded: Recorded) -> None:
    assert recorded.walked
    assert recorded.references == []


def test_the_twin_runs_in_other_processes_than_the_field(recorded: Recorded) -> None:
    assert recorded.twin_pids
    assert os.getpid() not in recorded.twin_pids


# -- the oracle ----------------------------------------------------------------------------


def test_only_the_evaluation_oracle_may_see_ground_truth() -> None:
    """The field calls ``observe_truth`` on drivers that define it: the oracle, never adaptive."""
    assert not hasattr(AdaptiveDriver, "observe_truth")
    assert hasattr(OracleDriver, "observe_truth")
    assert "EVALUATION ONLY" in (OracleDriver.__doc__ or "")


def test_oracle_runs_on_ground_truth_and_its_plans_are_accepted(tmp_path: Path) -> None:
    probe: dict[str, OracleDriver] = {}

    def factory(ctx: DriverContext) -> OracleDriver:
        probe["driver"] = OracleDriver(ctx)
        return probe["driver"]

    case = case_from_scenario("morning_peak")
    case = replace(case, end_s=case.begin_s + 600.0, warmup_s=300.0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(drivers._REGISTRY, "oracle-probe", factory)
        run_one(case, "oracle-probe", SEED, tmp_path, progress=False)
    driver = probe["driver"]
    stats = driver.close()
    assert driver.truth.seconds_observed == 600
    assert driver.truth.vehicles_in_snapshot > 0
    assert stats["decision_failures"] == 0
    assert stats["monitor_faults"] == 0
    assert isinstance(stats["plans_accepted_by_hardware"], int)
    assert stats["plans_accepted_by_hardware"] >= 1
    assert stats["rejected_by_hardware"] == 0
    flows = [d for d in driver.decisions if d.candidates]
    assert flows, "the oracle made no scored decision"
