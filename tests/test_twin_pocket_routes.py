"""Twin: vehicles standing on the lane that feeds a turning pocket may be that pocket's turners.

On the Schlosskreuzung the north and south arms widen into a left-turn pocket: ``N_in_3``
feeds both ``N_app_3`` (through) and ``N_app_4`` (the left pocket), so a queue on
``N_in_3`` can hold left turners waiting for room in a full pocket although its queue
sensor (``N2_q``) serves only the through group K1.  ``sim.twin_config`` maps lanes
upstream of the stop-line lanes to every route reachable from them, and the twin worker
may draw a standing vehicle on such a lane as any of those routes.  At the stop line a
vehicle keeps its lane's routes only.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from _twin_helpers import module_worker

from controller.plans import SignalProgram, StagePlan, compile_plan
from controller.twin import CAR, SumoTwin, TwinConfig, TwinError, TwinSnapshot, TwinVehicle, _Worker
from sim.junction import JunctionModel, load_junction
from sim.twin_config import _lane_successors, _upstream_lane_routes, twin_config_from_model

JUNCTION = Path(__file__).resolve().parent.parent / "scenarios" / "schlosskreuzung"
MODEL: JunctionModel = load_junction(JUNCTION)
CFG: TwinConfig = twin_config_from_model(MODEL)
RUNNING: SignalProgram = compile_plan(
    MODEL.signals, StagePlan(("P1", "P2", "P3", "P4"), (25, 10, 20, 8)), "running")

#: Turning shares with most of the north arm turning left (route NE, group K2).
SHARES = {"NW": 0.1, "NS": 0.3, "NE": 0.6}
N = 20


# -- configuration ----------------------------------------------------------------------


def test_lane_feeding_the_pocket_maps_to_the_pocket_turn_as_well() -> None:
    routes = CFG.lane_routes
    # The routes and their groups as the tests below read them.
    group = {r.id: r.group for r in CFG.routes}
    assert (group["NS"], group["NE"], group["SN"], group["SW"], group["WN"]) == (
        "K1", "K2", "K3", "K4", "K6")
    # Lanes that feed a pocket: through and the pocket's left turn.
    assert set(routes["N_in_3"]) == {"NS", "NE"}
    assert set(routes["S_in_3"]) == {"SN", "SW"}
    assert set(routes["W_in_2"]) == {"WS", "WE", "WN"}
    # Outer lanes with no access to the pocket: no left turn.
    assert set(routes["N_in_2"]) == {"NW", "NS"}
    assert set(routes["S_in_2"]) == {"SE", "SN"}
    assert "NE" not in routes["N_in_2"] and "SW" not in routes["S_in_2"]
    # The stop-line lanes keep exactly their own movements.
    assert tuple(routes["N_app_3"]) == ("NS",)
    assert tuple(routes["N_app_4"]) == ("NE",)
    assert tuple(routes["S_app_4"]) == ("SW",)
    assert tuple(routes["W_app_3"]) == ("WN",)
    assert set(routes["W_app_2"]) == {"WS", "WE"}


def test_lane_successors_are_the_normal_edge_connections_outside_the_signal() -> None:
    succ = _lane_successors(MODEL.net_file)
    assert sorted(succ["N_in_3"]) == ["N_app_3", "N_app_4"]
    assert succ["N_in_2"] == ["N_app_2"]
    assert sorted(succ["W_in_2"]) == ["W_app_2", "W_app_3"]
    # Connections over the traffic light and to walking areas are not followed.
    assert not any(lane.startswith("N_app_") for lane in succ)
    assert all(not s.startswith(":") for targets in succ.values() for s in targets)


def test_upstream_lane_routes_follow_chains_of_lanes() -> None:
    lane_routes = {"c_0": ["X"], "d_0": ["Y", "X"], "e_0": ["Z"]}
    successors = {
        "a_0": ["b_0"], "b_0": ["c_0", "d_0"],   # a -> b -> {c, d}
        "f_0": ["g_0"], "g_0": ["h_0"],          # leads to no stop-line lane
        "c_0": ["x_0"],                          # a stop-line lane itself: unchanged
        "l1": ["l2"], "l2": ["l3"], "l3": ["l4"], "l4": ["l5"], "l5": ["e_0"],
    }
    out = _upstream_lane_routes(lane_routes, successors)
    assert out["a_0"] == ["X", "Y"] and out["b_0"] == ["X", "Y"]
    assert "c_0" not in out and "f_0" not in out and "g_0" not in out
    # Four lanes of search: l2 reaches e_0 in four steps, l1 would need five.
    assert out["l2"] == ["Z"] and "l1" not in out


# -- departures --------------------------------------------------------------------------


worker = module_worker(CFG, "twin-pocket")


def snapshot(vehicles: list[TwinVehicle]) -> TwinSnapshot:
    # No arrival flow: the departures are the snapshot's vehicles only.
    return TwinSnapshot(0.0, RUNNING, 0, tuple(vehicles), {}, SHARES, {}, {})


def queue(lane: str, groups: tuple[str, ...], moving: bool = False) -> list[TwinVehicle]:
    length = CFG.lanes[lane].length_m
    return [TwinVehicle(CAR, lane, length - 1.0 - 7.5 * k, moving, groups) for k in range(N)]


def drawn(w: _Worker, vehicles: list[TwinVehicle]) -> Counter[str]:
    deps = w.departures(snapshot(vehicles))
    assert len(deps) == len(vehicles)
    assert all(d.depart == 0.0 for d in deps)
    return Counter(d.route.split("@")[0] for d in deps)


@pytest.mark.sumo
def test_standing_queue_on_the_pocket_feeder_holds_left_turners(worker: _Worker) -> None:
    # The through group's sensor sees the queue on N_in_3; with 60 % of the arm turning
    # left most of it is drawn as left turners waiting for the pocket (route NE).
    n = drawn(worker, queue("N_in_3", ("K1",)))
    assert set(n) <= {"NS", "NE"}  # N_in_3 leads nowhere else (no right turn, NW)
    assert 0.3 * N <= n["NE"] <= 0.9 * N
    assert n["NS"] >= 2
    # Placed on the lane's own edge: the route starts at N_in.
    deps = worker.departures(snapshot(queue("N_in_3", ("K1",))))
    assert {d.route for d in deps} <= {"NS@N_in", "NE@N_in"}
    assert {d.lane for d in deps} == {str(CFG.lanes["N_in_3"].index)}
    # The same on the south arm (left turn SW, group K4; shares not given: drawn uniformly).
    s = drawn(worker, queue("S_in_3", ("K3",)))
    assert set(s) == {"SN", "SW"}


@pytest.mark.sumo
def test_moving_vehicles_and_the_outer_lane_stay_with_their_groups(worker: _Worker) -> None:
    # Vehicles in transit on the feeder keep their loop's groups: K1, through only there.
    assert drawn(worker, queue("N_in_3", ("K1",), moving=True)) == Counter({"NS": N})
    # The outer lane has no access to the pocket: never drawn as a left turner.
    n = drawn(worker, queue("N_in_2", ("K1",)))
    assert "NE" not in n and sum(n.values()) == N
    assert set(n) <= {"NW", "NS"}


@pytest.mark.sumo
def test_at_the_stop_line_a_vehicle_keeps_its_lanes_routes(worker: _Worker) -> None:
    # The through lane at the stop line: never the left turn, even when the vehicle's
    # groups include the left group.
    assert drawn(worker, queue("N_app_3", ("K1",))) == Counter({"NS": N})
    assert drawn(worker, queue("N_app_3", ("K1", "K2"))) == Counter({"NS": N})
    # The left pocket itself: left turners only.
    assert drawn(worker, queue("N_app_4", ("K2",))) == Counter({"NE": N})


@pytest.mark.sumo
def test_a_failing_worker_names_the_cause() -> None:
    # libsumo's exceptions cannot be pickled back from a worker process: the caller saw only
    # "cannot pickle 'SwigPyObject'". The worker now passes any failure on as a TwinError
    # that names the original exception (here a program without a cycle).
    broken = SignalProgram("broken", 0, 0, dict(RUNNING.greens))
    with SumoTwin(CFG, workers=1) as twin, pytest.raises(TwinError, match="ZeroDivisionError"):
        twin.evaluate(snapshot(queue("N_in_3", ("K1",))), [broken])


@pytest.mark.sumo
def test_a_cyclist_on_the_bicycle_lane_is_not_placed_as_a_car(worker: _Worker) -> None:
    # Ground truth reported a left-turning cyclist on the west bicycle lane with its next
    # signal group K6; placed as a car there, SUMO refused it ("Invalid departLane
    # definition") and 69 of 1,789 oracle decisions failed. It does not block cars.
    cyclist = TwinVehicle(CAR, "W_in_1", 132.47, True, ("K6",))
    car = TwinVehicle(CAR, "W_in_2", 132.47, True, ("K6",))
    assert "W_in_1" not in worker.car_lanes and "W_in_2" in worker.car_lanes
    deps = worker.departures(snapshot([cyclist, car]))
    assert [(d.route, d.lane) for d in deps] == [("WN@W_in", str(CFG.lanes["W_in_2"].index))]
    draws = worker.build(snapshot([cyclist, car]))  # raised libsumo's TraCIException before
    assert draws and all(d.prefix.departed == 1 for d in draws)
