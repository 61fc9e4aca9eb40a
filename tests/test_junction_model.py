"""junction.toml loading, derivation for any TLS network, intergreen rules, config errors."""

from __future__ import annotations

import math
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from _junction_helpers import SK_DIR, SK_NET, netgenerate_grid, netgenerate_spider

from controller.errors import ConfigError
from controller.plans import lost_time_s
from controller.signals import GroupKind, JunctionSignals
from controller.webster import stage_min_greens
from sim.junction import (
    JunctionModel,
    derive_junction,
    intergreen_table,
    load_junction,
    pedestrian_min_green,
)


@pytest.fixture(scope="module")
def sk() -> JunctionModel:
    return load_junction("schlosskreuzung")


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> JunctionModel:
    d = tmp_path_factory.mktemp("grid")
    net = netgenerate_grid(d / "grid.net.xml")
    return derive_junction(net, "B1", out_dir=d / "derived")


def _check_consistent(m: JunctionModel) -> None:
    sig = m.signals
    assert sig.problems() == []
    # Every link index belongs to exactly one group.
    owners = sorted(i for g in sig.groups for i in g.links)
    assert owners == list(range(len(m.links)))
    assert len(m.links) == sig.link_count
    # Intergreens exist in both directions of every conflict, and only there.
    for pair in sig.conflicts:
        a, b = sorted(pair)
        assert (a, b) in sig.intergreen and (b, a) in sig.intergreen
    assert all(sig.conflicting(i, j) for i, j in sig.intergreen)
    # Stages conflict-free and covering every group.
    covered = set().union(*(s.groups for s in sig.stages))
    assert covered == set(sig.group_ids)
    for s in sig.stages:
        for a in s.groups:
            assert not any(sig.conflicting(a, b) for b in s.groups)
    # V1 floor: yellow of the ending group plus red-yellow of the starting group.
    for (i, j), z in sig.intergreen.items():
        assert z >= sig.group(i).yellow_s + sig.group(j).red_yellow_s


def test_schlosskreuzung_loads_consistently(sk: JunctionModel) -> None:
    _check_consistent(sk)
    assert sk.tls_id == "schlosskreuzung"
    assert {a.id for a in sk.approaches} == {"N", "E", "S", "W"}
    assert [s.id for s in sk.signals.stages] == ["P1", "P2", "P3", "P4"]
    assert set(sk.signals.group_ids) == {
        *(f"K{i}" for i in range(1, 9)), "R1", "R2", "R3", "F1", "F2", "F3", "F4"
    }


def test_conflicts_follow_traffic_logic(sk: JunctionModel) -> None:
    sig = sk.signals
    assert sig.conflicting("K2", "K3")  # N left vs S through
    assert sig.conflicting("K1", "K5")  # crossing streams
    assert not sig.conflicting("K1", "K3")  # opposing through
    # Right turners yield to parallel pedestrians and cyclists (minor green).
    assert sig.conditionally_compatible("K1", "F3")
    assert sig.conditionally_compatible("K1", "R1")
    assert sig.conflicting("K1", "F1")  # the crossing the N stream enters over
    k1_right = [i for i in sig.group("K1").links if sk.links[i].direction == "r"]
    assert k1_right and set(k1_right) <= sk.minor_links
    assert sk.state_string({"K1": "G"})[k1_right[0]] == "g"


def test_pedestrian_min_green_rule(sk: JunctionModel) -> None:
    root = ET.parse(SK_NET).getroot()
    lengths = {
        e.get("id"): float(e.find("lane").get("length", "nan"))  # type: ignore[union-attr]
        for e in root.iter("edge") if e.get("function") == "crossing"
    }
    for g in sk.signals.groups:
        if g.kind is GroupKind.PEDESTRIAN:
            crossing = sk.links[g.links[0]].crossing
            need = max(5, math.ceil(lengths[crossing] / 2 / sk.walking_speed_mps))
            assert g.min_green_s == need
            assert g.yellow_s == 0 and g.red_yellow_s == 0
    assert pedestrian_min_green(20.0, 1.2) == 9
    assert pedestrian_min_green(4.0, 1.5) == 5


def test_intergreen_geometry_is_plausible(sk: JunctionModel) -> None:
    sig = sk.signals
    vehicle = [z for (i, j), z in sig.intergreen.items()
               if sig.group(i).kind is GroupKind.VEHICLE and sig.group(j).kind is GroupKind.VEHICLE]
    assert min(vehicle) >= 4 and max(vehicle) <= 10
    # Pedestrians clearing a ~20 m crossing at 1.2 m/s need well over 10 s.
    assert sig.z("F1", "K1") >= 15
    calc = sk.intergreen_calcs[("K2", "K3")]
    assert calc.vehicle_length_m == 6.0 and calc.clearing_m > 0 and not calc.official
    assert "K1" in intergreen_table(sk).splitlines()[0]


def test_movement_lookup(sk: JunctionModel) -> None:
    assert sk.approach_of_edge("N_in") == "N"
    assert sk.approach_of_edge("E_out") == "E"
    assert sk.approach_of_edge(":schlosskreuzung_c0") is None
    assert sk.groups_for_movement("N", "S", "passenger") == ("K1",)
    assert sk.groups_for_movement("N", "E", "passenger") == ("K2",)
    assert "R1" in sk.groups_for_movement("N", "S", "bicycle")
    assert set(sk.groups_for_movement("N", "N", "pedestrian")) == {"F1"}
    assert sk.push_buttons["N_pb"].groups == ("F1",)
    assert len(sk.push_buttons["N_pb"].walking_areas) == 2


def test_detector_map(sk: JunctionModel) -> None:
    kinds = {d.id: d.kind.value for d in sk.detectors}
    assert kinds["N1_sl"] == "stop_line" and kinds["N1_up"] == "upstream"
    assert kinds["N1_q"] == "queue" and kinds["N_bus"] == "bus_request"
    assert kinds["N_pb"] == "push_button"
    by_id = {d.id: d for d in sk.detectors}
    assert by_id["N3_sl"].groups == ("K2",)
    assert 80 <= by_id["N1_up"].distance_m <= 120
    assert all(d.groups for d in sk.detectors)


def test_official_matrix_overrides(tmp_path: Path) -> None:
    d = tmp_path / "sk"
    shutil.copytree(SK_DIR, d)
    toml = d / "junction.toml"
    derived = load_junction(d).signals.z("K1", "K4")
    toml.write_text(toml.read_text() + '\n[intergreen]\n"K1->K4" = 12\n', encoding="utf-8")
    m = load_junction(d)
    assert derived != 12 and m.signals.z("K1", "K4") == 12
    assert m.intergreen_calcs[("K1", "K4")].official
    toml.write_text(toml.read_text().replace('"K1->K4" = 12', '"K1->K2" = 5'), encoding="utf-8")
    with pytest.raises(ConfigError, match="do not conflict"):
        load_junction(d)
    toml.write_text(toml.read_text().replace('"K1->K2" = 5', '"K2->K3" = 2'), encoding="utf-8")
    with pytest.raises(ConfigError, match="below yellow"):
        load_junction(d)


def test_derive_on_generated_grid(grid: JunctionModel) -> None:
    _check_consistent(grid)
    assert len(grid.approaches) == 4
    assert any(g.kind is GroupKind.PEDESTRIAN for g in grid.signals.groups)
    assert grid.additional_files and grid.additional_files[0].is_file()
    kinds = {d.kind.value for d in grid.detectors}
    assert {"stop_line", "upstream", "queue", "push_button"} <= kinds


def _minimum_cycle(m: JunctionModel) -> int:
    seq = [st.id for st in m.signals.stages]
    return lost_time_s(m.signals, seq) + sum(stage_min_greens(m.signals, seq))


def test_a_derived_junction_gets_room_to_adapt_in(
    grid: JunctionModel, tmp_path: Path
) -> None:
    """90 s, or the stages' minimum cycle plus 30 s, at most the validator's 120 s."""
    net = netgenerate_spider(5, tmp_path)
    spider = derive_junction(net, "A1")
    _check_consistent(spider)
    # Five arms, one stage each: minimum greens and intergreens alone fill 90 s.
    assert len(spider.signals.stages) == 5
    assert _minimum_cycle(spider) >= 85
    assert spider.signals.max_cycle_s == min(120, _minimum_cycle(spider) + 30)
    assert spider.signals.max_cycle_s - _minimum_cycle(spider) >= 30
    assert grid.signals.max_cycle_s == max(90, _minimum_cycle(grid) + 30)
    # The engineer's value stands where one is given.
    assert derive_junction(net, "A1", max_cycle_s=100).signals.max_cycle_s == 100


def test_derived_stages_no_plan_can_run_safely_are_a_config_error(tmp_path: Path) -> None:
    # Eight arms, one stage each: 136 s at minimum greens, over the 120 s ceiling.
    with pytest.raises(ConfigError, match=r"8 derived stages take 1\d\d s .* junction\.toml"):
        derive_junction(netgenerate_spider(8, tmp_path), "A1")


def test_derive_on_schlosskreuzung(tmp_path: Path) -> None:
    m = derive_junction(SK_NET, "schlosskreuzung", out_dir=tmp_path)
    _check_consistent(m)
    # The greedy cover finds the classic four-stage plan.
    assert len(m.signals.stages) == 4
    assert isinstance(m.signals, JunctionSignals)


def test_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.net.xml"
    with pytest.raises(ConfigError, match="does not exist") as exc:
        derive_junction(missing, "x")
    assert str(missing) in str(exc.value)
    bad = tmp_path / "bad.net.xml"
    bad.write_text("<net><edge id='a'", encoding="utf-8")
    with pytest.raises(ConfigError, match="malformed") as exc:
        derive_junction(bad, "x")
    assert "bad.net.xml" in str(exc.value)
    with pytest.raises(ConfigError, match="unknown traffic light id") as exc:
        derive_junction(SK_NET, "no_such_tls")
    assert "schlosskreuzung.net.xml" in str(exc.value)


def test_bad_junction_toml(tmp_path: Path) -> None:
    d = tmp_path / "sk"
    shutil.copytree(SK_DIR, d)
    toml = d / "junction.toml"
    text = toml.read_text()
    toml.write_text(text.replace('P2 = ["K2", "K4"]', 'P2 = ["K2", "K3"]'), encoding="utf-8")
    with pytest.raises(ConfigError, match="conflicting") as exc:
        load_junction(d)
    assert "junction.toml" in str(exc.value)
    toml.write_text(text.replace("walking_speed_mps = 1.2", "walking_speed_mps = 2.0"))
    with pytest.raises(ConfigError, match="walking_speed"):
        load_junction(d)
    # A number written as text is named, with where it stands (was: a ValueError traceback).
    toml.write_text(text.replace("max_cycle_s = 120", 'max_cycle_s = "120 s"'))
    with pytest.raises(ConfigError, match=r"top level: 'max_cycle_s' must be a whole number"):
        load_junction(d)
    toml.write_text(text.replace("speed_kmh = 50", 'speed_kmh = "50"', 1))
    with pytest.raises(ConfigError, match=r"approaches\[0\]: 'speed_kmh'"):
        load_junction(d)
    toml.write_text(text + "\n[[[", encoding="utf-8")
    with pytest.raises(ConfigError, match="malformed TOML"):
        load_junction(d)
    with pytest.raises(ConfigError, match="not found"):
        load_junction(tmp_path / "nowhere")
