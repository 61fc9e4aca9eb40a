"""Which collisions of a run the signals caused: the tests' reading of SUMO's collision output.

The conflict monitor proves that conflicting signal groups never showed anything but red
together.  A collision can still be the signals' fault: an intergreen too short lets a
vehicle clearing the junction meet one entering on a conflicting group.  Everything else is
the driver model's: road users released together by design (compatible, or conditionally
compatible with a duty to yield, SUMO's minor green ``g``) that failed to keep apart, and
collisions outside the signalised junction (the turn pockets' lane splits).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from functools import cache
from pathlib import Path

import sumolib

from sim.junction import JunctionModel


def _crossing_shapes(model: JunctionModel) -> dict[str, list[tuple[float, float]]]:
    return _crossings_of(Path(model.net_file))


@cache
def _crossings_of(net_file: Path) -> dict[str, list[tuple[float, float]]]:
    net = sumolib.net.readNet(str(net_file), withInternal=True)
    return {e.getID(): e.getLanes()[0].getShape() for e in net.getEdges(withInternal=True)
            if e.getFunction() == "crossing"}


def _distance(point: tuple[float, float], shape: list[tuple[float, float]]) -> float:
    d = sumolib.geomhelper.distancePointToPolygon(point, shape, perpendicular=False)
    return float(d) if d is not None and d >= 0 else math.inf


def _point(text: str | None) -> tuple[float, float] | None:
    if not text:
        return None
    x, y = text.split(",")[:2]
    return float(x), float(y)


def _groups(
    model: JunctionModel,
    role: str,
    collision: ET.Element,
    trips: Mapping[str, ET.Element],
    crossings: Mapping[str, list[tuple[float, float]]],
) -> tuple[str, ...]:
    """The signal groups that released one party (``collider`` or ``victim``)."""
    if collision.get(f"{role}Type") == "pedestrian":
        # The crossing the person stood on: the one nearest to where it was hit.
        where = _point(collision.get(f"{role}Front"))
        if where is None or not crossings:
            return ()
        crossing = min(crossings, key=lambda c: _distance(where, crossings[c]))
        return tuple(model.group_of_link(link.index) for link in model.links
                     if link.crossing == crossing)
    trip = trips.get(collision.get(role, ""))
    if trip is None:
        return ()
    src = model.approach_of_edge(trip.get("departLane", "").rsplit("_", 1)[0])
    dst = model.approach_of_edge(trip.get("arrivalLane", "").rsplit("_", 1)[0])
    if src is None or dst is None:
        return ()
    vclass = "bicycle" if "bicycle" in trip.get("vType", "") else "passenger"
    return model.groups_for_movement(src, dst, vclass)


def signal_caused_collisions(run_dir: Path, model: JunctionModel) -> list[str]:
    """Collisions inside the junction between parties of conflicting signal groups.

    A party whose group cannot be found (no trip record, a route that is not a movement
    of the junction) is counted against the signals: the benefit of the doubt goes to
    safety, not to the controller.
    """
    root = ET.parse(run_dir / "collisions.xml").getroot()
    trips = {t.get("id", ""): t for t in ET.parse(run_dir / "tripinfo.xml").getroot()}
    crossings = _crossing_shapes(model)
    signals = model.signals
    out: list[str] = []
    for c in root.iter("collision"):
        if not c.get("lane", "").startswith(f":{model.tls_id}_"):
            continue  # not in the signalised junction (a pocket's lane split)
        ours = _groups(model, "collider", c, trips, crossings)
        theirs = _groups(model, "victim", c, trips, crossings)
        released_together = bool(ours and theirs) and not any(
            signals.conflicting(a, b) for a in ours for b in theirs)
        if not released_together:
            out.append(f"t={c.get('time')} {c.get('collider')} {ours} -> "
                       f"{c.get('victim')} {theirs} ({c.get('type')})")
    return out
