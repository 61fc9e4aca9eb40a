"""Shared bits for runner tests: short Schlosskreuzung cases, a generated network, bench scripts."""

from __future__ import annotations

import importlib.util
import subprocess
from dataclasses import replace
from pathlib import Path
from types import ModuleType

from sim.field import sumo_binary
from sim.runner import Case, case_from_scenario


def short_case(
    scenario: str = "morning_peak", end_s: float = 900.0, warmup_s: float = 300.0
) -> Case:
    """A scenario cut to a short window (the demand of its first minutes)."""
    return replace(case_from_scenario(scenario), end_s=end_s, warmup_s=warmup_s)


def generated_network(workdir: Path) -> tuple[Path, Path, str]:
    """A 3x3 grid with traffic lights from the wheel's netgenerate, plus random trips.

    Returns (net file, route file, id of the centre traffic light).
    """
    tool = Path(sumo_binary()).parent
    net = workdir / "grid.net.xml"
    subprocess.run(
        [str(tool / "netgenerate"), "--grid", "--grid.number=3", "--grid.length=200",
         "--default.lanenumber=2", "--tls.guess", "true", "--no-turnarounds", "true",
         "-o", str(net)],
        check=True, capture_output=True,
    )
    routes = workdir / "grid.rou.xml"
    trips = []
    edges_in = ["A1B1", "C1B1", "B0B1", "B2B1"]
    edges_out = ["B1A1", "B1C1", "B1B0", "B1B2"]
    for k, t in enumerate(range(0, 600, 4)):
        src = edges_in[k % 4]
        dst = edges_out[(k // 4 + k) % 4]
        if dst[2:] != src[:2]:
            trips.append(f'  <trip id="t{k}" depart="{t}" from="{src}" to="{dst}"/>')
    routes.write_text("<routes>\n" + "\n".join(trips) + "\n</routes>\n")
    return net, routes, "B1"


def bench_traffic() -> ModuleType:
    """bench/traffic.py as a module (bench is no package)."""
    path = Path(__file__).resolve().parent.parent / "bench" / "traffic.py"
    spec = importlib.util.spec_from_file_location("bench_traffic", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
