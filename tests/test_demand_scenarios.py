"""Scenario files: the shipped ones load and are plausible; bad input is refused by name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from controller.errors import ConfigError
from sim.demand import (
    ARMS,
    SCENARIO_ROOT,
    list_scenarios,
    load_scenario,
    movement_flows,
    person_occupancy,
    vtype_modes,
)

EXPECTED = {
    "morning_peak", "evening_peak", "midday", "night", "school_start", "schloss_event",
    "incident", "asymmetric_turning", "oversaturation",
}
PEAKS = ("morning_peak", "evening_peak", "school_start", "incident")

VALID = """
title = "Test"
description = "A small valid scenario."
junction = "schlosskreuzung"
begin_s = 0
end_s = 3600
warmup_s = 600

[[periods]]
begin_s = 0
end_s = 1800
factor = 0.5

[[periods]]
begin_s = 1800
end_s = 3600
factor = 1.0
vehicles = { "W->E" = 90 }

[vehicles]
truck_share = 0.1
van_share = 0.05
[vehicles.flows]
"N->S" = 600
"W->E" = 30

[bicycles.flows]
"S->N" = 60

[pedestrians.flows]
"N->N" = 120

[[bus_lines]]
line = "1"
route = "N->S"
headway_s = 600
first_s = 100
stops = ["bus_N_in", "bus_S_out"]
dwell_s = 20
occupancy = 40

[[events]]
kind = "surge"
begin_s = 2400
end_s = 3000
vehicles = { "N->S" = 300 }

[[events]]
kind = "lane_closure"
edge = "N_app"
lane = 3
begin_s = 1000
end_s = 2000
"""


def _write(tmp_path: Path, text: str, name: str = "case") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_every_shipped_scenario_loads() -> None:
    names = list_scenarios()
    assert set(names) >= EXPECTED
    for name in names:
        s = load_scenario(name)
        assert s.name == name
        assert s.path == SCENARIO_ROOT / f"{name}.toml"
        assert s.junction == "schlosskreuzung"
        assert s.title and s.description
        assert s.end_s <= 5400
        assert s.warmup_s == 900
        assert s.end_s - s.measure_begin_s >= 3600


def test_shipped_scenarios_have_plausible_demand() -> None:
    for name in PEAKS:
        f = movement_flows(load_scenario(name))
        per_arm = {
            a: sum(q for (o, _d, m), q in f.items() if o == a and m in ("car", "truck"))
            for a in ARMS
        }
        # Main road approaches 600-900 veh/h at peak, Münsterstraße 400-600, Schloßstraße 150-300.
        assert 600 <= per_arm["N"] <= 900, (name, per_arm)
        assert 600 <= per_arm["S"] <= 900, (name, per_arm)
        assert 400 <= per_arm["W"] <= 600, (name, per_arm)
        assert 150 <= per_arm["E"] <= 300, (name, per_arm)
        buses = sum(q for (_o, _d, m), q in f.items() if m == "bus")
        assert 20 <= buses <= 30, (name, buses)
        trucks = sum(q for (_o, _d, m), q in f.items() if m == "truck")
        cars = sum(q for (_o, _d, m), q in f.items() if m == "car")
        assert 0.05 <= trucks / (trucks + cars) <= 0.08
    night = load_scenario("night")
    assert night.truck_share < load_scenario("midday").truck_share


def test_event_scenarios_express_their_event() -> None:
    school = load_scenario("school_start")
    (surge,) = school.surges
    assert 20 * 60 <= surge.end_s - surge.begin_s <= 30 * 60
    assert any(f.per_hour > 0 for f in surge.pedestrians)
    assert any(f.per_hour > 0 for f in surge.bicycles)

    event = load_scenario("schloss_event")
    arrive, leave = sorted(event.surges, key=lambda u: u.begin_s)
    assert all(f.destination == "E" for f in arrive.vehicles)
    assert all(f.origin == "E" for f in leave.vehicles)
    into_e = movement_flows(event, arrive.begin_s, arrive.end_s)
    before = movement_flows(event, event.measure_begin_s, arrive.begin_s)
    assert into_e[("N", "E", "car")] > 2 * before[("N", "E", "car")]

    (closure,) = load_scenario("incident").closures
    assert closure.end_s - closure.begin_s == 20 * 60
    assert closure.edge.startswith(("N_", "S_", "W_"))

    asym = movement_flows(load_scenario("asymmetric_turning"))
    assert asym[("N", "E", "car")] > 3 * asym[("S", "E", "car")]

    over = load_scenario("oversaturation")
    factors = [p.factor for p in over.periods]
    assert factors == sorted(factors) and factors[-1] >= 1.5 * factors[0]


def test_movement_flows_of_a_small_scenario(tmp_path: Path) -> None:
    s = load_scenario(_write(tmp_path, VALID))
    f = movement_flows(s)  # measured period 600-3600 s
    # N->S: 600 veh/h * 0.5 for 1200 s, * 1.0 for 1800 s, + 300 veh/h surge for 600 s.
    ns = (600 * 0.5 * 1200 + 600 * 1800 + 300 * 600) / 3000
    assert f[("N", "S", "truck")] == pytest.approx(0.1 * ns)
    assert f[("N", "S", "car")] == pytest.approx(0.9 * ns)  # vans count as cars
    # W->E: base 30 * 0.5 in the first period, explicit 90 (not scaled) in the second.
    we = (15 * 1200 + 90 * 1800) / 3000
    assert f[("W", "E", "car")] + f[("W", "E", "truck")] == pytest.approx(we)
    assert f[("N", "N", "pedestrian")] == pytest.approx((60 * 1200 + 120 * 1800) / 3000)
    # Timetable departures 700, 1300, ..., 3100 lie in the window: 5 buses in 3000 s.
    assert f[("N", "S", "bus")] == pytest.approx(5 / (3000 / 3600))
    whole = movement_flows(s, 0, 3600)
    assert whole[("S", "N", "bicycle")] == pytest.approx((30 * 1800 + 60 * 1800) / 3600)
    with pytest.raises(ValueError):
        movement_flows(s, 100, 100)


def test_occupancy_and_modes_cover_every_vtype(tmp_path: Path) -> None:
    s = load_scenario(_write(tmp_path, VALID))
    occ = person_occupancy(s)
    modes = vtype_modes(s)
    assert occ.keys() == modes.keys()
    assert occ["bus_1_NS"] == 40
    assert modes["bus_1_NS"] == "bus"
    assert modes["van"] == "car" and modes["truck"] == "truck"
    assert set(modes.values()) <= {"car", "truck", "bus", "bicycle", "pedestrian"}


def test_load_by_path_and_by_name_agree(tmp_path: Path) -> None:
    path = _write(tmp_path, VALID, name="mine")
    assert load_scenario("mine", root=tmp_path) == load_scenario(path)
    assert list_scenarios(tmp_path) == ["mine"]


BAD: list[tuple[str, str, str, str]] = [
    # (case id, text to replace, replacement, expected words in the message)
    ("end_before_begin", "end_s = 3600\nwarmup_s", "end_s = 0\nwarmup_s", "end_s"),
    ("warmup_beyond_end", "warmup_s = 600", "warmup_s = 4000", "warm-up"),
    ("negative_flow", '"N->S" = 600', '"N->S" = -5', ">= 0"),
    ("unknown_arm", '"N->S" = 600', '"N->X" = 600', "unknown arm 'X'"),
    ("bad_flow_key", '"N->S" = 600', '"NS" = 600', "N->S"),
    ("u_turn", '"N->S" = 600', '"N->N" = 600', "U-turn"),
    ("duplicate_od", '"N->S" = 600', '"N->S" = 600\n"N -> S" = 5', "twice"),
    ("overlapping_periods", "begin_s = 1800\nend_s = 3600\nfactor = 1.0",
     "begin_s = 1700\nend_s = 3600\nfactor = 1.0", "overlap"),
    ("gap_in_periods", "begin_s = 1800\nend_s = 3600\nfactor = 1.0",
     "begin_s = 1900\nend_s = 3600\nfactor = 1.0", "gap"),
    ("period_outside", "begin_s = 1800\nend_s = 3600\nfactor = 1.0",
     "begin_s = 1800\nend_s = 4000\nfactor = 1.0", "outside"),
    ("unknown_top_key", 'title = "Test"', 'title = "Test"\ncolour = "red"', "colour"),
    ("unknown_bus_key", "occupancy = 40", "occupancy = 40\nseats = 60", "seats"),
    ("unknown_type", "[vehicles]", "[types.tram]\noccupancy = 80\n\n[vehicles]", "tram"),
    ("missing_key", 'junction = "schlosskreuzung"\n', "", "junction"),
    ("shares_above_one", "van_share = 0.05", "van_share = 0.95", "exceed 1"),
    ("bus_stop_off_route", 'stops = ["bus_N_in", "bus_S_out"]',
     'stops = ["bus_N_in", "bus_W_out"]', "not on the route"),
    ("bus_headway_and_times", "headway_s = 600", "headway_s = 600\ntimes_s = [10]",
     "either headway_s or times_s"),
    ("bus_unknown_arm", 'route = "N->S"', 'route = "Q->S"', "unknown arm 'Q'"),
    ("closure_negative_lane", "lane = 3", "lane = -1", "lane index"),
    ("closure_after_end", "begin_s = 1000\nend_s = 2000", "begin_s = 3000\nend_s = 5000",
     "outside"),
    ("unknown_event", 'kind = "surge"', 'kind = "parade"', "parade"),
    ("bad_emission_class", "[vehicles]", '[types.car]\nemission_class = "Euro6"\n\n[vehicles]',
     "emission class"),
    ("not_toml", 'title = "Test"', 'title = "Test', "TOML"),
    ("bool_as_number", "warmup_s = 600", "warmup_s = true", "number"),
]


@pytest.mark.parametrize(("case", "old", "new", "words"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_config_error_naming_file(
    tmp_path: Path, case: str, old: str, new: str, words: str
) -> None:
    assert old in VALID, case
    path = _write(tmp_path, VALID.replace(old, new, 1), name=f"bad_{case}")
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    message = str(err.value)
    assert f"bad_{case}.toml" in message
    assert words.lower() in message.lower(), message


def test_missing_scenario_names_file_and_known_ones(tmp_path: Path) -> None:
    _write(tmp_path, VALID, name="exists")
    with pytest.raises(ConfigError, match=re.escape("nope.toml")) as err:
        load_scenario("nope", root=tmp_path)
    assert "exists" in str(err.value)
