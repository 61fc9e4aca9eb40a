"""Helpers for the demand tests: the network to run against, and SUMO in a subprocess.

The real Schlosskreuzung network is built by another part of the project.  Until it
exists, ``junction_net`` builds a stand-in with the same naming contract (``A_in``,
``A_out``, ``bus_A_in``, ``bus_A_out``, traffic light ``schlosskreuzung``) with the
netconvert of the SUMO wheel, so the demand files are tested against the contract
rather than against one drawing of the junction.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REAL_NET = REPO / "scenarios" / "schlosskreuzung" / "schlosskreuzung.net.xml"
REAL_STOPS = REPO / "scenarios" / "schlosskreuzung" / "busstops.add.xml"
BIN = Path(sys.executable).parent

ARMS = {"N": (0.0, 250.0), "S": (0.0, -250.0), "W": (-250.0, 0.0), "E": (250.0, 0.0)}
#: Motor-vehicle lanes per arm on the way in (main roads: two through lanes + left).
LANES_IN = {"N": 3, "S": 3, "W": 2, "E": 2}
LANES_OUT = {"N": 2, "S": 2, "W": 1, "E": 1}
BIKE = {"N": True, "S": True, "W": True, "E": False}


def _standin(tmp: Path) -> tuple[Path, Path]:
    nodes = ['<node id="C" x="0" y="0" type="traffic_light" tl="schlosskreuzung"/>']
    nodes += [f'<node id="{a}" x="{x}" y="{y}" type="priority"/>' for a, (x, y) in ARMS.items()]
    edges: list[str] = []
    for a in ARMS:
        bike = ' bikeLaneWidth="1.5"' if BIKE[a] else ""
        edges.append(
            f'<edge id="{a}_in" from="{a}" to="C" numLanes="{LANES_IN[a]}" speed="13.89"'
            f' sidewalkWidth="2.5"{bike}/>'
        )
        edges.append(
            f'<edge id="{a}_out" from="C" to="{a}" numLanes="{LANES_OUT[a]}" speed="13.89"'
            f' sidewalkWidth="2.5"{bike}/>'
        )
    nod = tmp / "standin.nod.xml"
    edg = tmp / "standin.edg.xml"
    nod.write_text("<nodes>\n" + "\n".join(nodes) + "\n</nodes>\n", encoding="utf-8")
    edg.write_text("<edges>\n" + "\n".join(edges) + "\n</edges>\n", encoding="utf-8")
    net = tmp / "schlosskreuzung.net.xml"
    subprocess.run(
        [str(BIN / "netconvert"), "-n", str(nod), "-e", str(edg), "-o", str(net),
         "--crossings.guess", "--no-turnarounds", "--walkingareas",
         "--tls.default-type", "static", "--no-warnings"],
        check=True, capture_output=True, text=True,
    )
    # Sidewalk is lane 0, the bike lane (where there is one) lane 1; buses stop in
    # the first lane motor vehicles may use.
    stops = []
    for a in ARMS:
        lane = 2 if BIKE[a] else 1
        stops.append(f'<busStop id="bus_{a}_in" lane="{a}_in_{lane}" startPos="60" endPos="80"/>')
        stops.append(
            f'<busStop id="bus_{a}_out" lane="{a}_out_{lane}" startPos="120" endPos="140"/>'
        )
    add = tmp / "busstops.add.xml"
    add.write_text("<additional>\n" + "\n".join(stops) + "\n</additional>\n", encoding="utf-8")
    return net, add


def junction_net(tmp: Path) -> tuple[Path, Path]:
    """(net, bus stop additional) of the real network when it exists, else a stand-in."""
    if REAL_NET.exists() and REAL_STOPS.exists():
        return REAL_NET, REAL_STOPS
    return _standin(tmp)


def run_libsumo(script: str, timeout_s: float = 120.0) -> dict[str, object]:
    """Run ``script`` in a fresh interpreter (libsumo allows one simulation per process).

    The script prints one JSON object as its last line of output; that object is
    returned.  A failing script fails the test with its stderr.
    """
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        check=False, capture_output=True, text=True, timeout=timeout_s, cwd=REPO,
    )
    if proc.returncode != 0:
        raise AssertionError(f"libsumo run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    result = json.loads(lines[-1])
    assert isinstance(result, dict)
    return result
