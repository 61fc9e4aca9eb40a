"""The Schlosskreuzung network: reproducible build, and a short SUMO run over every movement."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from _junction_helpers import SK_DIR, SK_NET

from sim.netbuild import build_net, net_content, sumo_binary

ARMS = "NESW"


def test_rebuild_reproduces_committed_net(tmp_path: Path) -> None:
    out = build_net(SK_DIR, tmp_path / "rebuilt.net.xml")
    assert net_content(out) == net_content(SK_NET)


def test_naming_contract() -> None:
    root = ET.parse(SK_NET).getroot()
    edges = {e.get("id") for e in root.iter("edge")}
    for a in ARMS:
        assert {f"{a}_in", f"{a}_out"} <= edges
    assert [t.get("id") for t in root.iter("tlLogic")] == ["schlosskreuzung"]
    stops = {s.get("id") for s in ET.parse(SK_DIR / "busstops.add.xml").getroot()}
    assert stops == {f"bus_{a}_{d}" for a in ARMS for d in ("in", "out")}


def _demand(path: Path) -> tuple[int, int]:
    lines = [
        "<routes>",
        '<vType id="car" vClass="passenger"/>',
        '<vType id="bus" vClass="bus"/>',
        '<vType id="bike" vClass="bicycle"/>',
    ]
    t, n_veh, n_per = 0, 0, 0
    for a in ARMS:
        for b in ARMS:
            if a == b:
                continue
            for vt in ("car", "bike", "bus"):
                lines.append(
                    f'<trip id="{vt}_{a}{b}" type="{vt}" depart="{t}" from="{a}_in" to="{b}_out"/>'
                )
                n_veh += 1
            lines.append(
                f'<person id="p_{a}{b}" depart="{t}"><walk from="{a}_in" to="{b}_out"/></person>'
            )
            n_per += 1
            t += 1
    lines.append("</routes>")
    path.write_text("\n".join(lines), encoding="utf-8")
    return n_veh, n_per


@pytest.mark.sumo
def test_sumo_run_all_movements(tmp_path: Path) -> None:
    """120 s with net, detectors and bus stops: loads cleanly, no junction collisions, every
    car/bike/bus movement and every walk finds a route (SUMO would warn 'No route')."""
    rou = tmp_path / "all.rou.xml"
    n_veh, n_per = _demand(rou)
    tripinfo = tmp_path / "tripinfo.xml"
    routes = tmp_path / "vehroute.xml"
    proc = subprocess.run(
        [
            str(sumo_binary("sumo")), "-n", str(SK_NET),
            "-a", f"{SK_DIR / 'detectors.add.xml'},{SK_DIR / 'busstops.add.xml'}",
            "-r", str(rou), "--end", "120", "--collision.check-junctions", "true",
            "--collision.action", "warn", "--no-step-log", "true",
            "--tripinfo-output", str(tripinfo), "--vehroute-output", str(routes),
            "--vehroute-output.write-unfinished", "true",
        ],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Error" not in proc.stderr
    assert "collision" not in proc.stderr.lower(), proc.stderr
    assert "No route" not in proc.stderr and "no valid route" not in proc.stderr
    assert not list(tmp_path.glob("NUL*")), "detector output went to a file"
    root = ET.parse(routes).getroot()
    vehicles = {v.get("id"): v.find("route") for v in root.iter("vehicle")}
    assert len(vehicles) == n_veh
    for vid, route in vehicles.items():
        assert route is not None, vid
        edges = str(route.get("edges")).split()
        movement = str(vid).split("_")[1]
        a, b = movement[0], movement[1]
        assert edges[0] == f"{a}_in" and edges[-1] == f"{b}_out", (vid, edges)
    persons = list(root.iter("person"))
    assert len(persons) == n_per
