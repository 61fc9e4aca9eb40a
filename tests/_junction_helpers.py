"""Shared fixtures-free helpers for the junction tests (no conftest: other areas share tests/)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from sim.netbuild import sumo_binary

REPO = Path(__file__).resolve().parent.parent
SK_DIR = REPO / "scenarios" / "schlosskreuzung"
SK_NET = SK_DIR / "schlosskreuzung.net.xml"


def netgenerate_grid(out: Path) -> Path:
    """A 3x3 grid with a traffic light at the centre node B1, sidewalks and crossings."""
    subprocess.run(
        [
            str(sumo_binary("netgenerate")), "--grid", "--grid.number=3", "--grid.length=200",
            "--tls.set", "B1", "--sidewalks.guess", "--crossings.guess", "-o", str(out),
        ],
        check=True, capture_output=True, timeout=60,
    )
    return out


def netgenerate_spider(arms: int, out_dir: Path) -> Path:
    """A one-ring spider whose centre A1 is a signalised junction with ``arms`` arms."""
    net = out_dir / f"spider{arms}.net.xml"
    subprocess.run(
        [
            str(sumo_binary("netgenerate")), "--spider", f"--spider.arm-number={arms}",
            "--spider.circle-number=1", "--spider.space-radius=200", "--tls.guess", "true",
            "--no-turnarounds", "true", "-o", str(net),
        ],
        check=True, capture_output=True, timeout=60,
    )
    return net
