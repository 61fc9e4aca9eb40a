"""Build the twin's configuration (``controller.twin.TwinConfig``) from a junction model.

The twin worker never imports ``sim/``: everything it needs about the
junction (network file, signal groups, routes per group, lanes, where the
detectors sit) is extracted here once into plain picklable data.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from controller.errors import ConfigError
from controller.estimator import PocketSpill
from controller.messages import DetectorKind
from controller.signals import GroupKind
from controller.twin import (
    BUS,
    CAR,
    DEFAULT_PEDESTRIAN_WEIGHT,
    TwinApproach,
    TwinConfig,
    TwinLane,
    TwinLoop,
    TwinQueueSensor,
    TwinRoute,
    TwinYield,
)
from sim.junction import JunctionModel
from sim.netbuild import netconvert_config, sumo_binary

#: Default split of a shared through+right group when nothing better is known:
#: most of such a group goes straight on (docs/twin.md).
DIRECTION_WEIGHTS: Mapping[str, float] = {"s": 0.8, "r": 0.2, "R": 0.2, "l": 1.0, "L": 1.0,
                                          "t": 0.1}
DEFAULT_OCCUPANCY: Mapping[str, float] = {CAR: 1.3, BUS: 20.0}
DEFAULT_PEDESTRIANS_PER_H = 60.0
#: The fast twin's vehicles leave this far into their exit edge: a car turning at 5.5 m/s
#: or starting from the stop line is at free speed well before (docs/twin.md).
EXIT_M = 100.0


#: Walking speed for the time a pedestrian keeps a turner's path blocked (RiLSA's
#: clearance speed), plus the seconds until the turner starts after the crossing clears.
PEDESTRIAN_CLEAR_SPEED_MPS = 1.2
PEDESTRIAN_CLEAR_EXTRA_S = 1.0


#: The vehicle-only twin network: netconvert on the junction's own plain-XML sources,
#: keeping only lanes wider than this (sidewalks 2.5 m and bicycle lanes 1.75 m go, and
#: with them the crossings and walking areas).  Motor-vehicle lanes are 3.25 m wide.
MIN_VEHICLE_LANE_WIDTH_M = 3.0
TWIN_NET_OPTIONS: tuple[str, ...] = (
    "--keep-lanes.min-width", str(MIN_VEHICLE_LANE_WIDTH_M),
    "--walkingareas", "false",
    "--no-warnings", "true",
)
#: SUMO's default lane width, for a network lane without a width attribute.
_DEFAULT_LANE_WIDTH_M = 3.2


@dataclass(frozen=True)
class _NetLane:
    lane: TwinLane
    width_m: float
    allow: str


def _read_net(net_file: Path) -> tuple[dict[str, _NetLane], list[tuple[str, str, int]]]:
    """Normal-edge lanes and the traffic light's connections (from lane, to lane, index)."""
    try:
        root = ET.parse(net_file).getroot()
    except (ET.ParseError, OSError) as exc:
        raise ConfigError(f"cannot read network: {exc}", net_file) from exc
    lanes: dict[str, _NetLane] = {}
    for edge in root.iter("edge"):
        if edge.get("function", "normal") != "normal":
            continue
        for lane in edge.iter("lane"):
            lid = lane.attrib["id"]
            lanes[lid] = _NetLane(
                TwinLane(lid, edge.attrib["id"], int(lane.attrib["index"]),
                         float(lane.attrib["length"])),
                float(lane.get("width", _DEFAULT_LANE_WIDTH_M)),
                lane.get("allow", ""),
            )
    links = [
        (f"{c.attrib['from']}_{c.attrib['fromLane']}", f"{c.attrib['to']}_{c.attrib['toLane']}",
         int(c.attrib["linkIndex"]))
        for c in root.iter("connection") if "linkIndex" in c.attrib
    ]
    return lanes, links


def _lane_successors(net_file: Path) -> dict[str, list[str]]:
    """Lane-to-lane connections between normal edges outside the traffic light
    (where an approach widens into turning pockets)."""
    try:
        root = ET.parse(net_file).getroot()
    except (ET.ParseError, OSError) as exc:
        raise ConfigError(f"cannot read network: {exc}", net_file) from exc
    out: dict[str, list[str]] = {}
    for c in root.iter("connection"):
        a = c.attrib
        if "tl" in a or a["from"].startswith(":") or a["to"].startswith(":"):
            continue
        out.setdefault(f"{a['from']}_{a['fromLane']}", []).append(f"{a['to']}_{a['toLane']}")
    return out


def _pocket_spills(
    queues: Mapping[str, TwinQueueSensor],
    successors: Mapping[str, list[str]],
    lanes: Mapping[str, TwinLane],
    *,
    one_lane: bool = False,
) -> tuple[PocketSpill, ...]:
    """Pockets whose feeding lane a queue sensor covers, with a parallel reference sensor.

    A pocket sensor covers one lane; its feeder is the sensor whose upstream lane
    continues into that pocket; the reference is another sensor of the feeder's
    groups (the through lane beside it).  Approaches without a parallel lane (one
    lane before the pocket) have no reference: they get a rule (``reference`` "")
    only with ``one_lane`` (the estimator's; the twin draws that jam mixed).
    """
    out: list[PocketSpill] = []
    for pid, pocket in queues.items():
        if len(pocket.lanes) != 1:
            continue
        lane = pocket.lanes[0]
        for fid, feeder in queues.items():
            if fid == pid or len(feeder.lanes) < 2 or lane not in successors.get(
                feeder.lanes[0], ()
            ):
                continue
            refs = sorted(
                rid for rid, r in queues.items()
                if rid not in (pid, fid) and set(r.groups) == set(feeder.groups)
            )
            if refs or one_lane:
                ref = refs[0] if refs else ""
                out.append(PocketSpill(pid, fid, ref, lanes[lane].length_m))
    return tuple(out)


def pocket_spills_from_model(model: JunctionModel) -> tuple[PocketSpill, ...]:
    """The junction's pockets whose overflow the estimator re-books (``Estimator(pockets=)``).

    Those with a parallel lane are the twin's (``TwinConfig.pocket_spills``): both
    book a full pocket's overflow to the pocket's turners.  One-lane arms come with
    ``reference`` "": the twin draws their jam mixed by its turning ratios, the
    estimator books the pocket groups' share of the arm's flow to them.
    """
    vehicle_groups = {
        g.id for g in model.signals.groups
        if g.kind in (GroupKind.VEHICLE, GroupKind.BUS)
        and any("passenger" in model.links[i].vclasses and model.links[i].crossing is None
                for i in g.links)
    }
    lanes = _lanes(model.net_file)
    queues = _queue_sensors(model, lanes, vehicle_groups)
    return _pocket_spills(queues, _lane_successors(model.net_file), lanes, one_lane=True)


def _queue_sensors(
    model: JunctionModel, lanes: Mapping[str, TwinLane], vehicle_groups: set[str]
) -> dict[str, TwinQueueSensor]:
    """The queue sensors on the network's lanes, with the vehicle groups they serve."""
    return {
        d.id: TwinQueueSensor(tuple(d.lanes), groups)
        for d in model.detectors
        if d.kind is DetectorKind.QUEUE and d.lanes and all(ln in lanes for ln in d.lanes)
        and (groups := tuple(g for g in d.groups if g in vehicle_groups))
    }


def _upstream_lane_routes(
    lane_routes: Mapping[str, list[str]], successors: Mapping[str, list[str]]
) -> dict[str, list[str]]:
    """Routes a vehicle on a lane upstream of the stop-line lanes can still take.

    A vehicle standing on the lane that feeds a left-turn pocket may be a left
    turner waiting for room in the pocket: the twin must be able to place it as
    one, or it sees a full pocket spill back as through traffic.
    """
    out: dict[str, list[str]] = {}
    for lane in successors:
        if lane in lane_routes:
            continue
        found: list[str] = []
        frontier, seen = [lane], {lane}
        for _ in range(4):  # a few edges of approach are plenty
            nxt: list[str] = []
            for ln in frontier:
                for succ in successors.get(ln, ()):
                    if succ in seen:
                        continue
                    seen.add(succ)
                    if succ in lane_routes:
                        found += [r for r in lane_routes[succ] if r not in found]
                    else:
                        nxt.append(succ)
            frontier = nxt
        if found:
            out[lane] = found
    return out


def _lanes(net_file: Path) -> dict[str, TwinLane]:
    return {lid: ln.lane for lid, ln in _read_net(net_file)[0].items()}


def twin_cache_dir() -> Path:
    """Where generated twin networks go (``$ATSC_CACHE_DIR``, else ``~/.cache/atsc``)."""
    root = os.environ.get("ATSC_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "atsc"
    )
    return Path(root) / "twin-nets"


def twin_net(model: JunctionModel) -> Path:
    """The junction's vehicle-only twin network, built on first use into the cache.

    The file name carries a hash of the netconvert configuration, every file it
    names, the twin's netconvert options and the netconvert binary, so an edited
    source gives a new network and a stale one is never used.  Generated
    networks are never committed.
    """
    cfg = netconvert_config(model.directory)
    try:
        root = ET.parse(cfg).getroot()
    except (ET.ParseError, OSError) as exc:
        raise ConfigError(f"malformed netconvert configuration: {exc}", cfg) from exc
    digest = hashlib.sha256(cfg.read_bytes())
    inputs = root.find("input")
    for el in inputs if inputs is not None else ():
        for name in str(el.get("value", "")).split(","):
            if name.strip():
                digest.update((cfg.parent / name.strip()).read_bytes())
    binary = sumo_binary("netconvert")
    st = binary.stat()
    digest.update(f"{TWIN_NET_OPTIONS}|{binary}|{st.st_size}|{st.st_mtime_ns}".encode())
    target = twin_cache_dir() / f"{model.name}-{digest.hexdigest()[:20]}.net.xml"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name, suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        proc = subprocess.run(
            [str(binary), "-c", cfg.name, *TWIN_NET_OPTIONS, "-o", tmp],
            cwd=cfg.parent, capture_output=True, text=True, check=False, timeout=120,
        )
        if proc.returncode != 0:
            errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error")]
            raise ConfigError(
                "netconvert (twin network) failed: " + ("; ".join(errors) or proc.stderr[-500:]),
                cfg,
            )
        # Atomic: a concurrent build of the same sources writes the same file.
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@dataclass(frozen=True)
class _TwinNet:
    net_file: Path
    #: Junction lane id -> twin lane id (vehicle lanes only).
    lane_of: Mapping[str, str]
    lanes: Mapping[str, TwinLane]
    #: Twin link index -> junction link index.
    link_map: tuple[int, ...]


def _vehicle_net(model: JunctionModel) -> _TwinNet:
    """The twin network and how its lanes and links match the junction's."""
    net_file = twin_net(model)
    full, _ = _read_net(model.net_file)
    twin, twin_links = _read_net(net_file)
    by_edge: dict[str, list[_NetLane]] = {}
    for ln in sorted(full.values(), key=lambda x: x.lane.index):
        by_edge.setdefault(ln.lane.edge, []).append(ln)
    twin_by_edge: dict[str, list[_NetLane]] = {}
    for ln in sorted(twin.values(), key=lambda x: x.lane.index):
        twin_by_edge.setdefault(ln.lane.edge, []).append(ln)
    lane_of: dict[str, str] = {}
    for edge, lanes in by_edge.items():
        kept = [ln for ln in lanes if ln.width_m > MIN_VEHICLE_LANE_WIDTH_M]
        theirs = twin_by_edge.get(edge, [])
        if len(kept) != len(theirs) or any(
            a.width_m != b.width_m or a.allow != b.allow for a, b in zip(kept, theirs, strict=False)
        ):
            raise ConfigError(
                f"twin network does not match the junction's lanes on edge {edge} "
                "(is the committed network built from the current sources?)", net_file
            )
        lane_of.update({a.lane.id: b.lane.id for a, b in zip(kept, theirs, strict=True)})
    # Link indices differ (the bicycle links and crossings are gone): match each twin link
    # to the junction link with the same from and to lane.
    back = {v: k for k, v in lane_of.items()}
    index = {(lk.from_lane, lk.to_lane): lk.index for lk in model.links if lk.crossing is None}
    link_map = [-1] * len(twin_links)
    for frm, to, i in twin_links:
        j = index.get((back.get(frm, ""), back.get(to, "")))
        if j is None:
            raise ConfigError(f"twin link {i} ({frm} -> {to}) has no junction link", net_file)
        link_map[i] = j
    if -1 in link_map:
        raise ConfigError("twin network link indices are not contiguous", net_file)
    return _TwinNet(net_file, lane_of, {k: v.lane for k, v in twin.items()}, tuple(link_map))


def _crossing_lengths(net_file: Path) -> dict[str, float]:
    """Crossing edge id -> length of its lane (the pedestrians' walk)."""
    root = ET.parse(net_file).getroot()
    out: dict[str, float] = {}
    for edge in root.iter("edge"):
        if edge.get("function") == "crossing":
            lengths = [float(ln.get("length", "0")) for ln in edge.iter("lane")]
            out[edge.attrib["id"]] = max(lengths, default=0.0)
    return out


def yields_from_model(model: JunctionModel) -> tuple[TwinYield, ...]:
    """The turning movements that yield to a crossing released with them (static geometry).

    A vehicle group and a pedestrian group that are conditionally compatible
    (the turners yield, minor green) share the seconds both are green; the
    group's links whose exit arm is the crossing's arm cross the pedestrians'
    path.  ``clear_s`` is the crossing's length at the clearance walking speed.
    """
    signals = model.signals
    lengths = _crossing_lengths(model.net_file)
    walk: dict[str, float] = {}
    for link in model.links:
        if link.crossing is not None and link.crossing in lengths:
            pg = model.group_of_link(link.index)
            walk[pg] = max(walk.get(pg, 0.0), lengths[link.crossing])
    out: list[TwinYield] = []
    for ped in signals.groups:
        if ped.kind is not GroupKind.PEDESTRIAN or ped.id not in walk:
            continue
        for g in signals.groups:
            if g.kind not in (GroupKind.VEHICLE, GroupKind.BUS):
                continue
            if not signals.conditionally_compatible(g.id, ped.id):
                continue
            links = tuple(
                i for i in g.links
                if model.links[i].crossing is None
                and model.approach_of_edge(model.links[i].to_edge) == ped.approach
            )
            if links:
                clear = walk[ped.id] / PEDESTRIAN_CLEAR_SPEED_MPS + PEDESTRIAN_CLEAR_EXTRA_S
                out.append(TwinYield(ped.id, g.id, links, round(clear, 2)))
    return tuple(out)


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
    pedestrian_weight: float = DEFAULT_PEDESTRIAN_WEIGHT,
    seed: int = 42,
    detailed: bool = False,
    vehicle_net: bool = False,
    pedestrian_yield: bool = True,
) -> TwinConfig:
    """The twin's configuration for ``model`` (routes, lanes, detector positions).

    ``detailed=True`` gives the reference twin: every program simulated from the
    snapshot on, vehicles driving to the end of their exit edge.  The default is
    the fast twin (docs/twin.md, "Performance"): the running cycle's rest
    simulated once and shared, and vehicles leaving ``EXIT_M`` into their exit
    edge; it ranks programs as the reference does (docs/twin.md, "Drivers").
    ``vehicle_net=True`` runs the twin on the vehicle-only network (``twin_net``).
    It was measured and is not the default: it is not faster, and its smaller
    junction changes the ranking.
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
    successors = _lane_successors(model.net_file)
    lane_routes.update(_upstream_lane_routes(lane_routes, successors))
    group_total: dict[str, float] = {}
    for rid, r in routes.items():
        group_total[r.group] = group_total.get(r.group, 0.0) + weights[rid]
    routes = {
        rid: TwinRoute(r.id, r.approach, r.edges, r.group, weights[rid] / group_total[r.group])
        for rid, r in routes.items()
    }

    upstream: dict[str, TwinLoop] = {}
    bus_requests: dict[str, TwinLoop] = {}
    buttons: dict[str, tuple[str, ...]] = {}
    vehicle_groups = {r.group for r in routes.values()}
    queues = _queue_sensors(model, lanes, vehicle_groups)
    for d in model.detectors:
        groups = tuple(g for g in d.groups if g in vehicle_groups)
        if d.kind in (DetectorKind.UPSTREAM, DetectorKind.BUS_REQUEST):
            if not d.lanes or d.lanes[0] not in lanes or not groups:
                continue
            pos = loop_pos.get(d.id, lanes[d.lanes[0]].length_m / 2)
            loop = TwinLoop(d.lanes[0], pos, d.distance_m, groups)
            (upstream if d.kind is DetectorKind.UPSTREAM else bus_requests)[d.id] = loop
        elif d.kind is DetectorKind.PUSH_BUTTON:
            buttons[d.id] = tuple(d.groups)

    spills = _pocket_spills(queues, successors, lanes)
    net_file = str(model.net_file)
    link_map: tuple[int, ...] = ()
    if vehicle_net:
        # The same places on the vehicle-only network: other lane ids (no sidewalk and
        # bicycle lane), and positions kept at their distance from the lane's end.
        vnet = _vehicle_net(model)
        net_file, link_map = str(vnet.net_file), vnet.link_map
        lane_of = vnet.lane_of

        def place(loop: TwinLoop) -> TwinLoop:
            twin_lane = vnet.lanes[lane_of[loop.lane]]
            to_end = lanes[loop.lane].length_m - loop.pos_m
            pos = min(max(twin_lane.length_m - to_end, 0.1), twin_lane.length_m - 0.1)
            return TwinLoop(twin_lane.id, pos, loop.distance_m, loop.groups)

        upstream = {d: place(loop) for d, loop in upstream.items() if loop.lane in lane_of}
        bus_requests = {
            d: place(loop) for d, loop in bus_requests.items() if loop.lane in lane_of
        }
        queues = {
            d: TwinQueueSensor(tuple(lane_of[ln] for ln in q.lanes), q.groups)
            for d, q in queues.items() if all(ln in lane_of for ln in q.lanes)
        }
        lane_routes = {lane_of[ln]: r for ln, r in lane_routes.items() if ln in lane_of}
        lanes = dict(vnet.lanes)

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
        net_file=net_file,
        tls_id=signals.tls_id,
        signals=signals,
        link_count=len(link_map) if link_map else model.link_count,
        approaches=tuple(approaches),
        routes=tuple(routes.values()),
        lanes=lanes,
        lane_routes={k: tuple(v) for k, v in lane_routes.items()},
        upstream=upstream,
        queues=queues,
        bus_requests=bus_requests,
        push_buttons=buttons,
        occupancy=dict(occupancy or DEFAULT_OCCUPANCY),
        pedestrian_weight=pedestrian_weight,
        pedestrian_flow_per_h=peds,
        horizon_s=horizon_s,
        seed=seed,
        link_map=link_map,
        exit_m=0.0 if detailed else EXIT_M,
        share_prefix=not detailed,
        yields=yields_from_model(model) if pedestrian_yield else (),
        pocket_spills=spills,
    )
