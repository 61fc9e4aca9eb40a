"""A tiny real SUMO run for the KPI and report tests.

A 3x3 grid with one traffic light at the centre junction ``B1`` (crossings and
sidewalks included), four vehicle modes and walking persons.  Each run takes
well under a second.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sim.kpis import kpi_sumo_args, tls_states_additional

BIN = Path(sys.executable).parent
TLS_ID = "B1"

#: vType id -> vClass of the routes below (ids deliberately not vClass names).
VTYPE_CLASSES = {"pkw": "passenger", "lkw": "truck", "linienbus": "bus", "rad": "bicycle",
                 "rotlicht": "passenger"}

ROUTES = """<routes>
  <vType id="pkw" vClass="passenger"/>
  <vType id="lkw" vClass="truck"/>
  <vType id="linienbus" vClass="bus"/>
  <vType id="rad" vClass="bicycle"/>
  <trip id="early" type="pkw" depart="0" from="A1B1" to="B1C1"/>
  <personFlow id="walk" begin="0" end="200" period="15">
    <walk from="A1B1" to="B1B0"/>
  </personFlow>
  <flow id="we" type="pkw" begin="1" end="220" period="5" from="A1B1" to="B1C1"/>
  <flow id="ns" type="pkw" begin="1" end="220" period="7" from="B2B1" to="B1B0"/>
  <flow id="bike" type="rad" begin="3" end="220" period="25" from="A1B1" to="B1B2"/>
  <flow id="bus" type="linienbus" begin="5" end="220" period="45" from="B0B1" to="B1B2"/>
  <flow id="truck" type="lkw" begin="10" end="220" period="35" from="C1B1" to="B1A1"/>
</routes>
"""

#: Drivers who run red lights and ignore foes: provokes junction collisions.
UNSAFE_ROUTES = """<routes>
  <vType id="rotlicht" vClass="passenger" jmDriveAfterRedTime="300" jmDriveRedSpeed="13"
         jmIgnoreFoeProb="1" jmIgnoreFoeSpeed="50" impatience="1"/>
  <flow id="we" type="rotlicht" begin="0" end="150" period="3" from="A1B1" to="B1C1"/>
  <flow id="ns" type="rotlicht" begin="0" end="150" period="3" from="B2B1" to="B1B0"/>
</routes>
"""


def build_net(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    net = folder / "grid.net.xml"
    subprocess.run(
        [
            str(BIN / "netgenerate"), "--grid", "--grid.number=3", "--grid.length=100",
            "--tls.set", TLS_ID, "--sidewalks.guess", "--crossings.guess",
            "--no-turnarounds", "-o", str(net),
        ],
        check=True, capture_output=True, timeout=60,
    )
    return net


def run_sumo(
    net: Path, run_dir: Path, *, routes: str = ROUTES, seed: int = 1, end_s: int = 300,
    extra: tuple[str, ...] = (), additional: tuple[Path, ...] = (),
) -> Path:
    """One ground-truth-style run into ``run_dir`` with the KPI options."""
    run_dir.mkdir(parents=True, exist_ok=True)
    route_file = run_dir / "routes.rou.xml"
    route_file.write_text(routes, encoding="utf-8")
    adds = ",".join(str(a) for a in (*additional, tls_states_additional(run_dir, TLS_ID)))
    done = subprocess.run(
        [
            str(BIN / "sumo"), "-n", str(net), "-r", str(route_file), "-a", adds,
            "--end", str(end_s), "--seed", str(seed), "--no-step-log", "true",
            "--no-warnings", "true", *kpi_sumo_args(run_dir), *extra,
        ],
        check=False, capture_output=True, text=True, timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"sumo failed: {done.stderr.strip()}")
    return run_dir


def write_queues(run_dir: Path, rows: list[tuple[float, str, float, int]]) -> Path:
    path = run_dir / "queues.csv"
    lines = ["time_s,approach,queue_m,halting_veh"]
    lines += [f"{t},{a},{q},{h}" for t, a, q, h in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
