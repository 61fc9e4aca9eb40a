"""Demand per signal group, for tuning the fixed-time baseline (Webster).

A competent engineer tunes a fixed-time plan with the known demand of the
period.  Two sources:

- a scenario's declared movement flows (from arm, to arm, mode) in veh/h;
- for any SUMO network, the vehicles in its route files, counted per
  movement through the junction over the time window.

Flows become flow ratios ``y = q / s`` per signal group with a saturation
flow model (Sättigungsverkehrsstärke): 1800 passenger-car units per hour of
green per lane for through traffic, times 0.90 for left turns and 0.85 for
right turns; trucks and buses count 2 pcu, bicycles in mixed lanes 0.3 pcu;
bicycle groups on their own lanes saturate at 3600 bicycles per hour.
"""

from __future__ import annotations

import itertools
import math
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from controller.errors import ConfigError
from controller.optimiser import Demand
from controller.signals import GroupKind
from sim.junction import JunctionModel

SATURATION_PCU_H = 1800.0
BICYCLE_SATURATION_H = 3600.0
TURN_FACTOR = {"l": 0.90, "L": 0.90, "t": 0.85, "r": 0.85, "R": 0.85}
PCU = {"passenger": 1.0, "car": 1.0, "truck": 2.0, "trailer": 2.5, "bus": 2.0,
       "delivery": 1.2, "bicycle": 0.3, "motorcycle": 0.5}
MODE_VCLASS = {"car": "passenger", "truck": "truck", "bus": "bus", "bicycle": "bicycle",
               "pedestrian": "pedestrian"}


def saturation_flow(model: JunctionModel, group_id: str) -> float:
    """Saturation flow of a signal group in pcu (or bicycles) per hour of green."""
    group = model.signals.group(group_id)
    lanes = max(1, len(model.group_in_lanes.get(group_id, ())))
    if group.kind is GroupKind.BICYCLE:
        return BICYCLE_SATURATION_H * lanes
    dirs = [model.links[i].direction for i in group.links]
    factors = [TURN_FACTOR.get(d, 1.0) for d in dirs] or [1.0]
    return SATURATION_PCU_H * lanes * (sum(factors) / len(factors))


def count_demand(model: JunctionModel, group_flows: Mapping[str, float]) -> dict[str, Demand]:
    """A traffic count as the optimiser's demand: flow and saturation flow per vehicular group."""
    return {
        g.id: Demand(group_flows.get(g.id, 0.0), saturation_flow(model, g.id))
        for g in model.signals.groups if g.is_vehicular
    }


def group_flows_from_movements(
    model: JunctionModel, movement_flows: Mapping[tuple[str, str, str], float]
) -> dict[str, float]:
    """pcu/h per signal group from (from_arm, to_arm, mode) -> veh/h."""
    out: dict[str, float] = defaultdict(float)
    for (src, dst, mode), q in movement_flows.items():
        vclass = MODE_VCLASS.get(mode, mode)
        if vclass == "pedestrian" or q <= 0:
            continue
        groups = model.groups_for_movement(src, dst, vclass)
        if not groups:
            continue
        weight = _weight(model, groups[0], vclass)
        for g in groups:
            out[g] += q * weight / len(groups)
    return dict(out)


def _weight(model: JunctionModel, group_id: str, vclass: str) -> float:
    if model.signals.group(group_id).kind is GroupKind.BICYCLE:
        return 1.0
    return PCU.get(vclass, 1.0)


def flow_ratios(model: JunctionModel, group_flows: Mapping[str, float]) -> dict[str, float]:
    """y = q / s per signal group."""
    return {
        g: q / saturation_flow(model, g)
        for g, q in group_flows.items()
        if model.signals.group(g).kind is not GroupKind.PEDESTRIAN
    }


def group_flows_from_routes(
    model: JunctionModel, route_files: Sequence[Path], begin_s: float, end_s: float
) -> dict[str, float]:
    """pcu/h per signal group counted from SUMO route files over [begin_s, end_s)."""
    import sumolib

    hours = max(1e-9, (end_s - begin_s) / 3600.0)
    net = sumolib.net.readNet(str(model.net_file))
    link_groups: dict[tuple[str, str], list[tuple[str, tuple[str, ...]]]] = defaultdict(list)
    for sg in model.signals.groups:
        for idx in sg.links:
            link = model.links[idx]
            if link.crossing is None:
                link_groups[(link.from_edge, link.to_edge)].append((sg.id, link.vclasses))
    vtypes: dict[str, str] = {}
    routes: dict[str, list[str]] = {}
    counts: dict[tuple[tuple[str, ...], str], float] = defaultdict(float)
    path_cache: dict[tuple[str, str], list[str]] = {}

    def path(src: str, dst: str) -> list[str]:
        key = (src, dst)
        if key not in path_cache:
            try:
                found, _cost = net.getShortestPath(net.getEdge(src), net.getEdge(dst))
            except KeyError:
                found = None
            path_cache[key] = [e.getID() for e in found] if found else [src, dst]
        return path_cache[key]

    for file in route_files:
        try:
            for _event, elem in ET.iterparse(file, events=("end",)):
                tag = elem.tag
                if tag == "vType":
                    vtypes[elem.get("id", "")] = elem.get("vClass", "passenger")
                elif tag == "route" and elem.get("id"):
                    routes[elem.get("id", "")] = elem.get("edges", "").split()
                elif tag in ("vehicle", "trip", "flow"):
                    edges = _edges_of(elem, routes, path)
                    n = _vehicles_in_window(elem, begin_s, end_s)
                    vclass = vtypes.get(elem.get("type", ""), "passenger")
                    if edges and n > 0:
                        counts[(tuple(edges), vclass)] += n
                    elem.clear()
        except (ET.ParseError, OSError) as exc:
            raise ConfigError(f"cannot read route file: {exc}", file) from None
    out: dict[str, float] = defaultdict(float)
    for (route_edges, vclass), n in counts.items():
        for a, b in itertools.pairwise(route_edges):
            candidates = link_groups.get((a, b))
            if not candidates:
                continue
            matching = [gid for gid, classes in candidates if not classes or vclass in classes]
            gids = sorted(set(matching or [gid for gid, _ in candidates]))
            for gid in gids:
                out[gid] += n / hours * _weight(model, gid, vclass) / len(gids)
            break
    return dict(out)


def _edges_of(elem: ET.Element, routes: Mapping[str, list[str]], path: object) -> list[str]:
    route_child = elem.find("route")
    if route_child is not None:
        return route_child.get("edges", "").split()
    ref = elem.get("route")
    if ref:
        return list(routes.get(ref, []))
    src, dst = elem.get("from"), elem.get("to")
    if src and dst:
        assert callable(path)
        result: list[str] = path(src, dst)
        return result
    return []


def _vehicles_in_window(elem: ET.Element, begin_s: float, end_s: float) -> float:
    if elem.tag != "flow":
        depart = elem.get("depart", "0")
        try:
            t = float(depart)
        except ValueError:
            t = begin_s
        return 1.0 if begin_s <= t < end_s else 0.0
    f_begin = float(elem.get("begin", "0"))
    f_end = float(elem.get("end", str(end_s)))
    lo, hi = max(begin_s, f_begin), min(end_s, f_end)
    if hi <= lo:
        return 0.0
    if elem.get("vehsPerHour"):
        rate = float(elem.get("vehsPerHour", "0")) / 3600.0
    elif elem.get("period"):
        period = elem.get("period", "")
        if period.startswith("exp(") and period.endswith(")"):
            rate = float(period[4:-1])
        else:
            rate = 1.0 / max(1e-9, float(period))
    elif elem.get("probability"):
        rate = float(elem.get("probability", "0"))
    elif elem.get("number"):
        return float(elem.get("number", "0")) * (hi - lo) / max(1e-9, f_end - f_begin)
    else:
        return 0.0
    return rate * (hi - lo) if math.isfinite(rate) else 0.0
