"""Build the twin's configuration (``controller.twin.TwinConfig``) from a junction model.

The twin worker never imports ``sim/``: everything it needs about the
junction (network file, signal groups, routes per group, lanes, where the
detectors sit) is extracted here once into plain picklable data.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path

from controller.errors import ConfigError
from controller.messages import DetectorKind
from controller.signals import GroupKind
from controller.twin import (
    BUS,
    CAR,
    TwinApproach,
    TwinConfig,
    TwinLane,
    TwinLoop,
    TwinQueueSensor,
    TwinRoute,
)
from sim.junction import JunctionModel

#: Default split of a shared through+right group when nothing better is known:
#: most of such a group goes straight on (docs/twin.md).
DIRECTION_WEIGHTS: Mapping[str, float] = {"s": 0.8, "r": 0.2, "R": 0.2, "l": 1.0, "L": 1.0,
                                          "t": 0.1}
DEFAULT_OCCUPANCY: Mapping[str, float] = {CAR: 1.3, BUS: 20.0}
DEFAULT_PEDESTRIANS_PER_H = 60.0
#: The fast twin's vehicles leave this far into their exit edge: a car turning at 5.5 m/s
#: or starting from the stop line is at free speed well before (docs/twin.md).
EXIT_M = 100.0


def _lanes(net_file: Path) -> dict[str, TwinLane]:
    try:
        root = ET.parse(net_file).getroot()
    except (ET.ParseError, OSError) as exc:
        raise ConfigError(f"cannot read network: {exc}", net_file) from exc
    out: dict[str, TwinLane] = {}
    for edge in root.iter("edge"):
        if edge.get("function", "normal") != "normal":
            continue
        for lane in edge.iter("lane"):
            lid = lane.attrib["id"]
            out[lid] = TwinLane(lid, edge.attrib["id"], int(lane.attrib["index"]),
                                float(lane.attrib["length"]))
    return out


def _loop_positions(files: tuple[Path, ...]) -> dict[str, float]:
    out: dict[str, float] = {}
    for f in files:
        try:
            root = ET.parse(f).getroot()
        except (ET.ParseError, OSError) as exc:
            raise ConfigError(f"cannot read additional file: {exc}", f) from exc
        for el in root:
            if el.tag in ("inductionLoop", "e1Detector") and "id" in el.attrib:
                out[el.attrib["id"]] = float(el.get("pos", "0"))
    return out


def twin_config_from_model(
    model: JunctionModel,
    *,
    horizon_s: int = 300,
    occupancy: Mapping[str, float] | None = None,
    pedestrian_flow_per_h: Mapping[str, float] | None = None,
    seed: int = 42,
    detailed: bool = False,
) -> TwinConfig:
    """The twin's configuration for ``model`` (routes, lanes, detector positions).

    ``detailed=True`` gives the reference twin: every program simulated from the
    snapshot on, vehicles driving to the end of their exit edge.  The default is
    the fast twin (docs/twin.md, "Performance"): the running cycle's rest is
    simulated once and shared, and vehicles leave ``EXIT_M`` into their exit edge.
    """
    signals = model.signals
    lanes = _lanes(model.net_file)
    loop_pos = _loop_positions(model.additional_files)

    routes: dict[str, TwinRoute] = {}
    lane_routes: dict[str, list[str]] = {}
    weights: dict[str, float] = {}
    approach_groups: dict[str, list[str]] = {}
    for g in signals.groups:
        if g.kind not in (GroupKind.VEHICLE, GroupKind.BUS):
            continue
        for idx in g.links:
            link = model.links[idx]
            if link.crossing is not None or "passenger" not in link.vclasses:
                continue
            src = model.approach_of_edge(link.from_edge)
            dst = model.approach_of_edge(link.to_edge)
            if src is None or dst is None:
                continue
            arm = model.approach(src)
            rid = f"{src}{dst}"
            if rid not in routes:
                routes[rid] = TwinRoute(rid, src, (*arm.in_edges, link.to_edge), g.id, 0.0)
                weights[rid] = DIRECTION_WEIGHTS.get(link.direction, 0.5)
                arm_groups = approach_groups.setdefault(src, [])
                if g.id not in arm_groups:
                    arm_groups.append(g.id)
            lane_routes.setdefault(link.from_lane, [])
            if rid not in lane_routes[link.from_lane]:
                lane_routes[link.from_lane].append(rid)
    if not routes:
        raise ConfigError(f"junction {model.name}: no vehicle movement for the twin")
    group_total: dict[str, float] = {}
    for rid, r in routes.items():
        group_total[r.group] = group_total.get(r.group, 0.0) + weights[rid]
    routes = {
        rid: TwinRoute(r.id, r.approach, r.edges, r.group, weights[rid] / group_total[r.group])
        for rid, r in routes.items()
    }

    upstream: dict[str, TwinLoop] = {}
    bus_requests: dict[str, TwinLoop] = {}
    queues: dict[str, TwinQueueSensor] = {}
    buttons: dict[str, tuple[str, ...]] = {}
    vehicle_groups = {r.group for r in routes.values()}
    for d in model.detectors:
        groups = tuple(g for g in d.groups if g in vehicle_groups)
        if d.kind in (DetectorKind.UPSTREAM, DetectorKind.BUS_REQUEST):
            if not d.lanes or d.lanes[0] not in lanes or not groups:
                continue
            pos = loop_pos.get(d.id, lanes[d.lanes[0]].length_m / 2)
            loop = TwinLoop(d.lanes[0], pos, d.distance_m, groups)
            (upstream if d.kind is DetectorKind.UPSTREAM else bus_requests)[d.id] = loop
        elif d.kind is DetectorKind.QUEUE:
            if d.lanes and all(ln in lanes for ln in d.lanes) and groups:
                queues[d.id] = TwinQueueSensor(tuple(d.lanes), groups)
        elif d.kind is DetectorKind.PUSH_BUTTON:
            buttons[d.id] = tuple(d.groups)

    approaches: list[TwinApproach] = []
    for a in model.approaches:
        if a.id not in approach_groups:
            continue
        entry = a.in_edges[0]
        entry_len = max((ln.length_m for ln in lanes.values() if ln.edge == entry), default=0.0)
        seen = [loop.pos_m for loop in upstream.values() if lanes[loop.lane].edge == entry]
        approaches.append(TwinApproach(
            a.id, entry, min(seen) if seen else entry_len, tuple(approach_groups[a.id])
        ))

    peds = {
        g.id: (pedestrian_flow_per_h or {}).get(g.id, DEFAULT_PEDESTRIANS_PER_H)
        for g in signals.groups if g.kind is GroupKind.PEDESTRIAN
    }
    return TwinConfig(
        net_file=str(model.net_file),
        tls_id=signals.tls_id,
        signals=signals,
        link_count=model.link_count,
        approaches=tuple(approaches),
        routes=tuple(routes.values()),
        lanes=lanes,
        lane_routes={k: tuple(v) for k, v in lane_routes.items()},
        upstream=upstream,
        queues=queues,
        bus_requests=bus_requests,
        push_buttons=buttons,
        occupancy=dict(occupancy or DEFAULT_OCCUPANCY),
        pedestrian_flow_per_h=peds,
        horizon_s=horizon_s,
        seed=seed,
        exit_m=0.0 if detailed else EXIT_M,
        share_prefix=not detailed,
    )
