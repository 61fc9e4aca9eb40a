"""The tests' rule for collisions the signals caused (tests/_collisions.py), on made-up output.

The scenario tests trust it to pass a run; here it must also fail one: a collision between
parties of conflicting signal groups is the signals' fault, one between parties released
together (a right-turner and the crossing it yields to) is the driver model's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _collisions import _crossing_shapes, signal_caused_collisions

from sim.junction import JunctionModel, load_junction

TRIPS = {
    # id: (depart lane, arrival lane, vType)
    "right": ("W_app_0", "S_out_0", "car"),  # K5, minor green towards crossing F2
    "through_n": ("N_app_1", "S_out_1", "car"),  # K1, conflicts with K5
}


@pytest.fixture(scope="module")
def model() -> JunctionModel:
    return load_junction("schlosskreuzung")


def crossing_middle(model: JunctionModel, group: str) -> str:
    crossing = next(link.crossing for link in model.links
                    if link.crossing and model.group_of_link(link.index) == group)
    assert crossing is not None
    (x0, y0), (x1, y1) = _crossing_shapes(model)[crossing][:2]
    return f"{(x0 + x1) / 2:.2f},{(y0 + y1) / 2:.2f}"


def run_dir(tmp_path: Path, collisions: list[dict[str, str]]) -> Path:
    trips = "".join(
        f'<tripinfo id="{i}" departLane="{d}" arrivalLane="{a}" vType="{t}"/>'
        for i, (d, a, t) in TRIPS.items())
    (tmp_path / "tripinfo.xml").write_text(f"<tripinfos>{trips}</tripinfos>")
    rows = "".join(
        "<collision " + " ".join(f'{k}="{v}"' for k, v in c.items()) + "/>" for c in collisions)
    (tmp_path / "collisions.xml").write_text(f"<collisions>{rows}</collisions>")
    return tmp_path


def hit_pedestrian(model: JunctionModel, on_crossing_of: str) -> dict[str, str]:
    return {"time": "100.00", "type": "crossing", "lane": f":{model.tls_id}_29_0",
            "collider": "right", "victim": "ped.1", "colliderType": "car",
            "victimType": "pedestrian", "victimFront": crossing_middle(model, on_crossing_of)}


def test_the_parties_are_found_from_the_trips_and_the_crossing(model: JunctionModel) -> None:
    signals = model.signals
    assert model.groups_for_movement("W", "S", "passenger") == ("K5",)
    assert model.groups_for_movement("N", "S", "passenger") == ("K1",)
    assert signals.conditionally_compatible("K5", "F2") and signals.conflicting("K5", "F3")
    assert signals.conflicting("K5", "K1")


def test_a_turner_hitting_the_pedestrian_it_yields_to_is_not_the_signals(
    model: JunctionModel, tmp_path: Path
) -> None:
    assert signal_caused_collisions(run_dir(tmp_path, [hit_pedestrian(model, "F2")]), model) == []


def test_a_turner_hitting_a_pedestrian_of_a_conflicting_crossing_is_the_signals(
    model: JunctionModel, tmp_path: Path
) -> None:
    caused = signal_caused_collisions(run_dir(tmp_path, [hit_pedestrian(model, "F3")]), model)
    assert len(caused) == 1 and "('K5',)" in caused[0] and "('F3',)" in caused[0], caused


def test_vehicles_of_conflicting_groups_are_the_signals_outside_the_junction_is_not(
    model: JunctionModel, tmp_path: Path
) -> None:
    crash = {"time": "200.00", "type": "junction", "collider": "through_n", "victim": "right",
             "colliderType": "car", "victimType": "car"}
    inside = {**crash, "lane": f":{model.tls_id}_3_0"}
    split = {**crash, "lane": ":W_split_0_1"}
    caused = signal_caused_collisions(run_dir(tmp_path, [inside, split]), model)
    assert caused == ["t=200.00 through_n ('K1',) -> right ('K5',) (junction)"]


def test_a_party_without_a_trip_counts_against_the_signals(
    model: JunctionModel, tmp_path: Path
) -> None:
    unknown = {**hit_pedestrian(model, "F2"), "collider": "no-such-vehicle"}
    assert len(signal_caused_collisions(run_dir(tmp_path, [unknown]), model)) == 1
