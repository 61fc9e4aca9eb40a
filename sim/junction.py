"""Junction model: signal groups, conflicts, intergreens, stages and detectors from a SUMO network.

Two ways in:

- ``load_junction(name)`` reads ``scenarios/<name>/junction.toml`` (the engineer's
  signal group definitions, stages, optional official intergreen matrix,
  detector map) and checks it against the network.
- ``derive_junction(net_file, tls_id)`` builds the same model for any SUMO
  network with a traffic light: signal groups from the connections, conflicts
  from the network's foe matrix, stages by a greedy cover, default detectors.

Vocabulary: signal group = Signalgruppe; stage = Phase; intergreen =
Zwischenzeit (transition time Überfahrzeit + clearing time Räumzeit - entering
time Einfahrzeit, see docs/intergreen.md); minimum green = Mindestfreigabezeit;
push-button = Anforderungstaster; bus request point = ÖPNV-Anmeldepunkt.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from controller.errors import ConfigError
from controller.messages import DetectorInfo, DetectorKind
from controller.plans import SignalProgram, StagePlan, compile_plan
from controller.safety import validate_program
from controller.signals import CYCLE_CEILING_S, GroupKind, JunctionSignals, SignalGroup, Stage
from controller.webster import stage_min_greens

REPO_ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = REPO_ROOT / "scenarios"

#: Vehicle length added to the clearing distance (safety.md V2).
MOTOR_VEHICLE_LENGTH_M = 6.0
BICYCLE_LENGTH_M = 0.0
#: Clearing speeds (Räumgeschwindigkeit).
CLEAR_THROUGH_MPS = 10.0
CLEAR_TURNING_MPS = 7.0
CLEAR_BICYCLE_MPS = 4.0
#: Entering speeds (Einfahrgeschwindigkeit): high values are the conservative side.
ENTER_MOTOR_MPS = 10.0
ENTER_BICYCLE_MPS = 5.0
DEFAULT_WALKING_SPEED_MPS = 1.2
WALKING_SPEED_RANGE = (1.0, 1.5)
#: Detector placement (docs/junction.md).
STOP_LINE_SETBACK_M = 2.0
UPSTREAM_DISTANCE_M = 100.0
QUEUE_LENGTH_M = 130.0
#: A loop this close to the stop line counts as a stop-line detector.
STOP_LINE_MAX_M = 10.0
#: Maximum cycle of a derived junction (Umlaufzeit): the usual urban 90 s, raised where the
#: stages' minimum greens and intergreens leave less than ``DERIVED_CYCLE_ROOM_S`` to adapt
#: in, up to the validator's ceiling (docs/junction.md, "Any SUMO junction").
DERIVED_MAX_CYCLE_S = 90
DERIVED_CYCLE_ROOM_S = 30
_SAMPLE_M = 0.5
_TURNS = frozenset("rlRLtT")
_LEFTS = frozenset("lLtT")


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Approach:
    """One arm (Zufahrt): incoming edges (upstream to junction) and outgoing edges."""

    id: str
    name: str
    in_edges: tuple[str, ...]
    out_edges: tuple[str, ...]
    speed_kmh: int
    #: Main road (Hauptstraße): 10 s minimum green for its vehicle groups, else 5 s.
    main: bool = True


@dataclass(frozen=True)
class LinkInfo:
    """One link index of the traffic light (one SUMO connection, or a pedestrian crossing)."""

    index: int
    from_lane: str
    to_lane: str
    from_edge: str
    to_edge: str
    #: SUMO direction character: s, r, l, t, R, L, ...
    direction: str
    #: Vehicle classes allowed on ``from_lane`` (``("pedestrian",)`` for crossings).
    vclasses: tuple[str, ...]
    #: Crossing edge id for pedestrian links, else ``None``.
    crossing: str | None = None


@dataclass(frozen=True)
class PushButton:
    """Anforderungstaster: a pedestrian request for one crossing."""

    id: str
    crossing: str
    #: Walking areas at both ends of the crossing, where persons wait.
    walking_areas: tuple[str, ...]
    groups: tuple[str, ...]


@dataclass(frozen=True)
class IntergreenCalc:
    """How one derived intergreen came about (the governing link pair)."""

    ending: str
    starting: str
    link_ending: int
    link_starting: int
    transition_s: float
    clearing_m: float
    vehicle_length_m: float
    clearing_speed_mps: float
    entering_m: float
    entering_speed_mps: float
    raw_s: float
    floor_s: int
    z_s: int
    official: bool = False


@dataclass(frozen=True)
class JunctionModel:
    """Everything the field, the twin and the controller need to know about one junction."""

    name: str
    directory: Path
    net_file: Path
    additional_files: tuple[Path, ...]
    signals: JunctionSignals
    approaches: tuple[Approach, ...]
    detectors: tuple[DetectorInfo, ...]
    links: tuple[LinkInfo, ...]
    group_in_lanes: Mapping[str, tuple[str, ...]]
    group_out_lanes: Mapping[str, tuple[str, ...]]
    push_buttons: Mapping[str, PushButton]
    #: Link indices that show SUMO's minor green ``g`` (turners that yield to a
    #: conditionally compatible group: right turns to pedestrians and cyclists).
    minor_links: frozenset[int]
    walking_speed_mps: float = DEFAULT_WALKING_SPEED_MPS
    intergreen_calcs: Mapping[tuple[str, str], IntergreenCalc] = field(
        default_factory=lambda: MappingProxyType({})
    )

    @property
    def tls_id(self) -> str:
        return self.signals.tls_id

    @property
    def link_count(self) -> int:
        return len(self.links)

    def approach(self, approach_id: str) -> Approach:
        for a in self.approaches:
            if a.id == approach_id:
                return a
        raise KeyError(approach_id)

    def approach_of_edge(self, edge: str) -> str | None:
        """The arm an (incoming or outgoing) edge belongs to, ``None`` for others."""
        for a in self.approaches:
            if edge in a.in_edges or edge in a.out_edges:
                return a.id
        return None

    def group_of_link(self, index: int) -> str:
        for g in self.signals.groups:
            if index in g.links:
                return g.id
        raise KeyError(index)

    def groups_for_movement(self, from_arm: str, to_arm: str, vclass: str) -> tuple[str, ...]:
        """Signal groups releasing ``vclass`` from one arm to another.

        For ``vclass="pedestrian"`` the groups of the crossings over the two
        arms (a person crosses the arm it arrives on or the one it leaves on).
        """
        a, b = self.approach(from_arm), self.approach(to_arm)
        out: list[str] = []
        for link in self.links:
            if vclass == "pedestrian":
                if link.crossing is None:
                    continue
                crossed = _crossing_edges(self, link.crossing)
                arms = set(a.in_edges) | set(a.out_edges) | set(b.in_edges) | set(b.out_edges)
                hit = bool(crossed & arms)
            else:
                hit = (
                    link.crossing is None
                    and link.from_edge in a.in_edges
                    and link.to_edge in b.out_edges
                    and vclass in link.vclasses
                )
            if hit:
                g = self.group_of_link(link.index)
                if g not in out:
                    out.append(g)
        return tuple(out)

    def state_string(self, group_states: Mapping[str, str]) -> str:
        """SUMO link state string from one state character (``r u G y``) per group.

        Minor links show ``g`` instead of ``G``.  Groups not named show red.
        """
        from sim.tlsprogram import LinkStates

        return LinkStates(self.signals, self.minor_links).encode(group_states)


def _crossing_edges(model: JunctionModel, crossing: str) -> set[str]:
    net = _read_net_cached(model.net_file)
    return set(net.edges[crossing].crossing_edges) if crossing in net.edges else set()


# --------------------------------------------------------------------------- network


@dataclass
class _Lane:
    id: str
    edge: str
    index: int
    length: float
    width: float
    shape: np.ndarray
    allowed: frozenset[str]


@dataclass
class _Edge:
    id: str
    function: str
    from_node: str
    to_node: str
    priority: int
    name: str
    lanes: list[_Lane]
    crossing_edges: tuple[str, ...] = ()


@dataclass
class _Conn:
    from_edge: str
    to_edge: str
    from_lane: int
    to_lane: int
    via: str | None
    tl: str | None
    link_index: int
    link_index2: int
    direction: str


@dataclass
class _Net:
    path: Path
    edges: dict[str, _Edge]
    lanes: dict[str, _Lane]
    conns: list[_Conn]
    junctions: dict[str, ET.Element]
    tls_states: dict[str, int]

    def conns_from_lane(self, lane_id: str) -> list[_Conn]:
        edge, idx = lane_id.rsplit("_", 1)
        return [c for c in self.conns if c.from_edge == edge and c.from_lane == int(idx)]


_NET_CACHE: dict[tuple[Path, float], _Net] = {}


def _allowed(allow: str | None, disallow: str | None) -> frozenset[str]:
    from sumolib.net.lane import get_allowed  # heavy import, only here

    return frozenset(str(c) for c in get_allowed(allow, disallow))


def _shape(text: str | None) -> np.ndarray:
    if not text:
        return np.zeros((0, 2))
    pts = [tuple(float(v) for v in p.split(",")[:2]) for p in text.split()]
    return np.array(pts, dtype=float)


def _read_net_cached(net_file: Path) -> _Net:
    path = Path(net_file).resolve()
    if not path.is_file():
        raise ConfigError("network file does not exist", path)
    key = (path, path.stat().st_mtime)
    if key not in _NET_CACHE:
        _NET_CACHE[key] = _read_net(path)
    return _NET_CACHE[key]


def _read_net(path: Path) -> _Net:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ConfigError(f"malformed network XML: {exc}", path) from exc
    if root.tag != "net":
        raise ConfigError(f"not a SUMO network (root element <{root.tag}>)", path)
    edges: dict[str, _Edge] = {}
    lanes: dict[str, _Lane] = {}
    try:
        for e in root.iter("edge"):
            eid = e.attrib["id"]
            edge = _Edge(
                id=eid,
                function=e.get("function", "normal"),
                from_node=e.get("from", ""),
                to_node=e.get("to", ""),
                priority=int(e.get("priority", "0")),
                name=e.get("name", ""),
                lanes=[],
                crossing_edges=tuple(e.get("crossingEdges", "").split()),
            )
            for ln in e.iter("lane"):
                lane = _Lane(
                    id=ln.attrib["id"],
                    edge=eid,
                    index=int(ln.attrib["index"]),
                    length=float(ln.attrib["length"]),
                    width=float(ln.get("width", "3.2")),
                    shape=_shape(ln.get("shape")),
                    allowed=_allowed(ln.get("allow"), ln.get("disallow")),
                )
                edge.lanes.append(lane)
                lanes[lane.id] = lane
            edges[eid] = edge
        conns = [
            _Conn(
                from_edge=c.attrib["from"],
                to_edge=c.attrib["to"],
                from_lane=int(c.attrib["fromLane"]),
                to_lane=int(c.attrib["toLane"]),
                via=c.get("via"),
                tl=c.get("tl"),
                link_index=int(c.get("linkIndex", "-1")),
                link_index2=int(c.get("linkIndex2", "-1")),
                direction=c.get("dir", "s"),
            )
            for c in root.iter("connection")
        ]
        junctions = {j.attrib["id"]: j for j in root.iter("junction")}
        tls_states: dict[str, int] = {}
        for tl in root.iter("tlLogic"):
            phase = tl.find("phase")
            if phase is not None:
                tls_states.setdefault(tl.attrib["id"], len(phase.attrib["state"]))
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"malformed network: {exc!r}", path) from exc
    if not edges:
        raise ConfigError("network has no edges", path)
    return _Net(path, edges, lanes, conns, junctions, tls_states)


def _node_of(net: _Net, lane_id: str) -> str:
    """Junction a controlled link belongs to (the node the incoming lane ends at)."""
    edge = net.edges[net.lanes[lane_id].edge]
    if edge.function == "normal":
        return edge.to_node
    return edge.id[1:].rsplit("_", 1)[0]


def _request_index(net: _Net, node: str) -> dict[tuple[str, str], int]:
    """(from lane, to lane) -> row of the junction's request (foe) matrix.

    Same counting as SUMO: incoming lanes in ``incLanes`` order, each lane's
    connections in file order, skipping sidewalk<->walking area links.
    """
    j = net.junctions[node]
    out: dict[tuple[str, str], int] = {}
    n = 0
    for lane_id in j.get("incLanes", "").split():
        if lane_id not in net.lanes:
            continue
        from_fn = net.edges[net.lanes[lane_id].edge].function
        for c in net.conns_from_lane(lane_id):
            to_fn = net.edges[c.to_edge].function if c.to_edge in net.edges else "normal"
            if to_fn == "walkingarea" or (from_fn == "walkingarea" and to_fn != "crossing"):
                continue
            out[(lane_id, f"{c.to_edge}_{c.to_lane}")] = n
            n += 1
    return out


def _foes(net: _Net, node: str) -> dict[int, str]:
    return {
        int(r.attrib["index"]): r.attrib["foes"]
        for r in net.junctions[node].iter("request")
    }


def _links(net: _Net, tls_id: str) -> tuple[LinkInfo, ...]:
    by_index: dict[int, LinkInfo] = {}
    for c in net.conns:
        if c.tl != tls_id:
            continue
        from_lane = f"{c.from_edge}_{c.from_lane}"
        to_lane = f"{c.to_edge}_{c.to_lane}"
        to_fn = net.edges[c.to_edge].function
        crossing = c.to_edge if to_fn == "crossing" else None
        vclasses = ("pedestrian",) if crossing else tuple(sorted(net.lanes[from_lane].allowed))
        for idx in (c.link_index, c.link_index2):
            if idx >= 0 and idx not in by_index:
                by_index[idx] = LinkInfo(
                    idx, from_lane, to_lane, c.from_edge, c.to_edge, c.direction, vclasses, crossing
                )
    n = net.tls_states.get(tls_id, 0)
    if not by_index:
        raise ConfigError(f"unknown traffic light id {tls_id!r} (no controlled links)", net.path)
    missing = [i for i in range(n) if i not in by_index]
    if missing or max(by_index) >= n:
        raise ConfigError(
            f"traffic light {tls_id!r}: link indices {missing} have no connection "
            f"(state length {n})", net.path
        )
    return tuple(by_index[i] for i in range(n))


def _link_foes(net: _Net, links: Sequence[LinkInfo]) -> set[frozenset[int]]:
    """Pairs of link indices SUMO marks as foes (per junction of the traffic light)."""
    rows: dict[int, tuple[str, int]] = {}
    for link in links:
        node = _node_of(net, link.from_lane)
        req = _request_index(net, node)
        key = (link.from_lane, link.to_lane)
        if key in req:
            rows[link.index] = (node, req[key])
    foes_by_node = {node: _foes(net, node) for node, _ in rows.values()}
    out: set[frozenset[int]] = set()
    for a, (na, ra) in rows.items():
        fa = foes_by_node[na].get(ra, "")
        for b, (nb, rb) in rows.items():
            if a < b and na == nb and fa and fa[len(fa) - rb - 1] == "1":
                out.add(frozenset((a, b)))
    return out


# --------------------------------------------------------------------------- geometry


def _path(net: _Net, link: LinkInfo) -> tuple[np.ndarray, float]:
    """Polyline a road user follows through the junction, and the path's width."""
    if link.crossing:
        lane = net.lanes[link.to_lane]
        return lane.shape, lane.width
    pts: list[np.ndarray] = []
    lane_w = net.lanes[link.from_lane].width
    via = next(
        (c.via for c in net.conns_from_lane(link.from_lane)
         if f"{c.to_edge}_{c.to_lane}" == link.to_lane),
        None,
    )
    seen = 0
    while via and via in net.lanes and seen < 10:
        pts.append(net.lanes[via].shape)
        nxt = net.conns_from_lane(via)
        via = nxt[0].via if nxt else None
        seen += 1
    if not pts:
        # No internal lanes in the network: straight line between the lanes.
        a = net.lanes[link.from_lane].shape[-1]
        b = net.lanes[link.to_lane].shape[0]
        return np.array([a, b]), lane_w
    return np.vstack(pts), lane_w


def _resample(poly: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points every ~0.5 m along a polyline, and their distance from its start."""
    if len(poly) < 2:
        return poly, np.zeros(len(poly))
    seg = np.diff(poly, axis=0)
    seg_len = np.hypot(seg[:, 0], seg[:, 1])
    cum = np.concatenate([[0.0], np.cumsum(seg_len)])
    n = max(2, math.ceil(cum[-1] / _SAMPLE_M) + 1)
    s = np.linspace(0.0, cum[-1], n)
    x = np.interp(s, cum, poly[:, 0])
    y = np.interp(s, cum, poly[:, 1])
    return np.column_stack([x, y]), s


def conflict_distances(
    path_i: np.ndarray, width_i: float, path_j: np.ndarray, width_j: float
) -> tuple[float, float, float, float]:
    """Where two paths share road space.

    Returns ``(clear_i, enter_j, len_i, len_j)``: distance along ``i`` to the
    far end of the shared area, distance along ``j`` to its near end, and the
    path lengths.  Paths that never come closer than their half widths (foes
    by SUMO's rules only) are taken at their closest approach.
    """
    pi, si = _resample(path_i)
    pj, sj = _resample(path_j)
    d = np.hypot(pi[:, None, 0] - pj[None, :, 0], pi[:, None, 1] - pj[None, :, 1])
    close = d < (width_i + width_j) / 2.0
    if close.any():
        ii, jj = np.nonzero(close)
        return float(si[ii.max()]), float(sj[jj.min()]), float(si[-1]), float(sj[-1])
    i, j = np.unravel_index(int(np.argmin(d)), d.shape)
    return float(si[i]), float(sj[j]), float(si[-1]), float(sj[-1])


# --------------------------------------------------------------------------- rules


def yellow_for_speed(speed_kmh: int) -> int:
    """Gelbzeit by approach speed (safety.md V3): 3 s at 50, 4 s at 60, 5 s at 70 km/h."""
    if speed_kmh <= 50:
        return 3
    if speed_kmh <= 60:
        return 4
    return 5


def pedestrian_min_green(crossing_length_m: float, walking_speed_mps: float) -> int:
    """V4: at least 5 s and enough to reach the middle of the crossing."""
    return max(5, math.ceil(crossing_length_m / 2.0 / walking_speed_mps - 1e-9))


def _is_bicycle_only(link: LinkInfo) -> bool:
    return link.crossing is None and set(link.vclasses) == {"bicycle"}


def _yields(turner: LinkInfo, other: LinkInfo) -> bool:
    """Whether ``turner`` may be green with ``other`` by yielding to it (bedingt verträglich)."""
    if turner.crossing is not None or turner.direction not in ("r", "R"):
        return False
    if other.crossing is not None:
        return False  # decided by the caller with the crossing's edges
    return (
        _is_bicycle_only(other)
        and other.from_edge == turner.from_edge
        and other.direction == "s"
    )


def _classify_pairs(
    net: _Net,
    links: Sequence[LinkInfo],
    link_group: Mapping[int, str],
    link_foes: set[frozenset[int]],
) -> tuple[set[frozenset[str]], set[frozenset[str]], set[int]]:
    """Group conflicts, conditionally compatible pairs and the minor (yielding) links."""
    by_pair: dict[frozenset[str], list[tuple[int, int]]] = {}
    for pair in link_foes:
        a, b = sorted(pair)
        ga, gb = link_group[a], link_group[b]
        if ga == gb:
            continue
        by_pair.setdefault(frozenset((ga, gb)), []).append((a, b))
    conflicts: set[frozenset[str]] = set()
    conditional: set[frozenset[str]] = set()
    minor: set[int] = set()
    for gp, pairs in by_pair.items():
        turners: set[int] = set()
        ok = True
        for a, b in pairs:
            la, lb = links[a], links[b]
            t = _turner(net, la, lb)
            if t is None:
                ok = False
                break
            turners.add(t)
        if ok:
            conditional.add(gp)
            minor |= turners
        else:
            conflicts.add(gp)
    return conflicts, conditional, minor


def _turner(net: _Net, la: LinkInfo, lb: LinkInfo) -> int | None:
    for t, o in ((la, lb), (lb, la)):
        if t.crossing is not None or t.direction not in ("r", "R"):
            continue
        if o.crossing is not None:
            crossed = net.edges[o.crossing].crossing_edges
            if t.to_edge in crossed:
                return t.index
        elif _yields(t, o):
            return t.index
    return None


def _link_kind(link: LinkInfo) -> str:
    if link.crossing is not None:
        return "pedestrian"
    if _is_bicycle_only(link):
        return "bicycle"
    return "motor"


def _intergreens(
    net: _Net,
    *,
    links: Sequence[LinkInfo],
    groups: Sequence[SignalGroup],
    conflicts: set[frozenset[str]],
    link_foes: set[frozenset[int]],
    walking_speed: float,
    official: Mapping[tuple[str, str], int],
    source: Path,
) -> dict[tuple[str, str], IntergreenCalc]:
    by_id = {g.id: g for g in groups}
    link_group = {i: g.id for g in groups for i in g.links}
    paths = {link.index: _path(net, link) for link in links}
    best: dict[tuple[str, str], IntergreenCalc] = {}
    for pair in link_foes:
        a, b = sorted(pair)
        ga, gb = link_group.get(a), link_group.get(b)
        if ga is None or gb is None or frozenset((ga, gb)) not in conflicts:
            continue
        for i, j in ((a, b), (b, a)):
            gi, gj = by_id[link_group[i]], by_id[link_group[j]]
            li, lj = links[i], links[j]
            (pi, wi), (pj, wj) = paths[i], paths[j]
            clear, enter, _, _ = conflict_distances(pi, wi, pj, wj)
            ki, kj = _link_kind(li), _link_kind(lj)
            if ki == "pedestrian":
                # Persons walk both ways: the longer remaining part must clear.
                clear_i2, _, _, _ = conflict_distances(pi[::-1], wi, pj, wj)
                clear = max(clear, clear_i2)
                v_clear, veh_len, t_tr = walking_speed, 0.0, 0.0
            elif ki == "bicycle":
                v_clear, veh_len, t_tr = CLEAR_BICYCLE_MPS, BICYCLE_LENGTH_M, float(gi.yellow_s)
            else:
                v_clear = CLEAR_TURNING_MPS if li.direction in _TURNS else CLEAR_THROUGH_MPS
                veh_len, t_tr = MOTOR_VEHICLE_LENGTH_M, float(gi.yellow_s)
            if kj == "pedestrian":
                v_enter, t_enter = 0.0, 0.0  # conservative: persons step in at once
            else:
                v_enter = ENTER_BICYCLE_MPS if kj == "bicycle" else ENTER_MOTOR_MPS
                t_enter = enter / v_enter
            raw = t_tr + (clear + veh_len) / v_clear - t_enter
            floor = gi.yellow_s + gj.red_yellow_s
            z = max(floor, math.ceil(raw - 1e-9), 0)
            calc = IntergreenCalc(
                gi.id, gj.id, i, j, t_tr, clear, veh_len, v_clear, enter, v_enter,
                raw, floor, z,
            )
            key = (gi.id, gj.id)
            if key not in best or calc.raw_s > best[key].raw_s:
                best[key] = calc
    for (ge, gs), z in official.items():
        if frozenset((ge, gs)) not in conflicts:
            raise ConfigError(f"[intergreen] {ge}->{gs}: the groups do not conflict", source)
        floor = by_id[ge].yellow_s + by_id[gs].red_yellow_s
        if z < floor:
            raise ConfigError(
                f"[intergreen] {ge}->{gs} = {z} s is below yellow + red-yellow = {floor} s",
                source,
            )
        old = best.get((ge, gs))
        best[(ge, gs)] = IntergreenCalc(
            ge, gs, old.link_ending if old else -1, old.link_starting if old else -1,
            0.0, 0.0, 0.0, 0.0, 0.0, 0.0, float(z), floor, z, official=True,
        )
    return best


# --------------------------------------------------------------------------- stages


def greedy_stages(
    groups: Sequence[SignalGroup],
    conflicts: set[frozenset[str]],
    order: Sequence[str],
) -> tuple[Stage, ...]:
    """Cover all groups by conflict-free stages, seeding each stage with the first uncovered group.

    ``order`` ranks groups (through movements first, then lefts, bicycles,
    pedestrians), so a through movement pulls in its opposing through
    movement and the parallel pedestrians and cyclists.
    """
    uncovered = list(order)
    stages: list[list[str]] = []
    while uncovered:
        stage = [uncovered[0]]
        candidates = uncovered[1:] + [g for g in order if g not in uncovered]
        for g in candidates:
            if all(frozenset((g, s)) not in conflicts for s in stage):
                stage.append(g)
        stages.append(stage)
        uncovered = [g for g in uncovered if g not in stage]
    del groups
    return tuple(Stage(f"P{k + 1}", frozenset(s)) for k, s in enumerate(stages))


# --------------------------------------------------------------------------- detectors


def _downstream_lanes(net: _Net, lane_id: str, stop_edges: set[str]) -> tuple[list[str], float]:
    """Approach lanes fed by ``lane_id``, and the distance from its end to the stop line."""
    frontier = [(lane_id, 0.0)]
    out: list[str] = []
    dist = 0.0
    for _ in range(10):
        nxt: list[tuple[str, float]] = []
        for lid, d in frontier:
            if net.lanes[lid].edge in stop_edges:
                out.append(lid)
                dist = max(dist, d)
                continue
            for c in net.conns_from_lane(lid):
                tgt = f"{c.to_edge}_{c.to_lane}"
                if tgt in net.lanes and net.edges[c.to_edge].function == "normal":
                    nxt.append((tgt, d + net.lanes[tgt].length))
        if not nxt:
            break
        frontier = nxt
    return sorted(set(out)), dist


def _read_detectors(
    net: _Net,
    files: Sequence[Path],
    approaches: Sequence[Approach],
    lane_groups: Mapping[str, tuple[str, ...]],
) -> list[DetectorInfo]:
    stop_edges = {a.in_edges[-1] for a in approaches if a.in_edges}
    edge_app = {e: a.id for a in approaches for e in a.in_edges}
    out: list[DetectorInfo] = []
    for f in files:
        try:
            root = ET.parse(f).getroot()
        except (ET.ParseError, OSError) as exc:
            raise ConfigError(f"cannot read additional file: {exc}", f) from exc
        for el in root:
            if el.tag not in ("inductionLoop", "e1Detector", "laneAreaDetector", "e2Detector"):
                continue
            did = el.get("id", "")
            lanes = tuple((el.get("lanes") or el.get("lane") or "").split())
            if not did or not lanes or any(ln not in net.lanes for ln in lanes):
                raise ConfigError(f"detector {did!r} names unknown lanes {lanes}", f)
            last = lanes[-1]
            feeds, after = _downstream_lanes(net, last, stop_edges)
            is_e1 = el.tag in ("inductionLoop", "e1Detector")
            pos = float(el.get("pos", "0"))
            if pos < 0:
                pos += net.lanes[lanes[0]].length
            # Queue sensors measure from the stop line upstream, so their distance is 0.
            distance = net.lanes[last].length - pos + after if is_e1 else after
            groups = sorted({g for ln in feeds for g in lane_groups.get(ln, ())})
            if not is_e1:
                kind = DetectorKind.QUEUE
            elif "bus" in (el.get("vTypes") or "").split() or any(
                prm.get("key") == "atsc.kind" and prm.get("value") == "bus_request"
                for prm in el.iter("param")
            ):
                kind = DetectorKind.BUS_REQUEST
            elif distance <= STOP_LINE_MAX_M:
                kind = DetectorKind.STOP_LINE
            else:
                kind = DetectorKind.UPSTREAM
            approach = edge_app.get(net.lanes[last].edge, "")
            out.append(DetectorInfo(did, kind, approach, lanes, tuple(groups), round(distance, 2)))
    return out


def _default_detectors(
    net: _Net, approaches: Sequence[Approach], links: Sequence[LinkInfo]
) -> tuple[list[str], list[tuple[str, str]]]:
    """Default detector XML lines (stop line, upstream, queue per incoming motor lane)."""
    lines: list[str] = []
    placed: list[tuple[str, str]] = []
    link_lanes = {link.from_lane for link in links if link.crossing is None}
    for a in approaches:
        last = a.in_edges[-1]
        motor = [ln for ln in net.edges[last].lanes
                 if ln.id in link_lanes and "passenger" in ln.allowed]
        for n, lane in enumerate(motor, 1):
            pre = f"{_xml_id(a.id)}{n}"
            lines.append(
                f'    <inductionLoop id="{pre}_sl" lane="{lane.id}" '
                f'pos="{max(0.0, lane.length - STOP_LINE_SETBACK_M):.2f}" period="60" file="NUL"/>'
            )
            chain = _upstream_chain(net, lane, QUEUE_LENGTH_M)
            up_lane, up_pos = _position_upstream(net, chain, UPSTREAM_DISTANCE_M)
            lines.append(
                f'    <inductionLoop id="{pre}_up" lane="{up_lane}" pos="{up_pos:.2f}" '
                f'period="60" file="NUL"/>'
            )
            q_first, q_pos = _position_upstream(net, chain, QUEUE_LENGTH_M)
            q_lanes = [ln.id for ln in reversed(chain)]
            q_lanes = q_lanes[q_lanes.index(q_first):]
            lines.append(
                f'    <laneAreaDetector id="{pre}_q" lanes="{" ".join(q_lanes)}" '
                f'pos="{q_pos:.2f}" endPos="{lane.length:.2f}" period="60" file="NUL"/>'
            )
            placed += [(f"{pre}_sl", lane.id), (f"{pre}_up", up_lane), (f"{pre}_q", lane.id)]
    return lines, placed


def _xml_id(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", s)


def _upstream_chain(net: _Net, lane: _Lane, length: float) -> list[_Lane]:
    """``lane`` and its single predecessors upstream, until ``length`` metres are covered."""
    chain = [lane]
    total = lane.length
    while total < length:
        preds = [
            net.lanes[f"{c.from_edge}_{c.from_lane}"]
            for c in net.conns
            if f"{c.to_edge}_{c.to_lane}" == chain[-1].id
            and c.from_edge in net.edges and net.edges[c.from_edge].function == "normal"
        ]
        if len(preds) != 1 or preds[0] in chain:
            break
        chain.append(preds[0])
        total += preds[0].length
    return chain


def _position_upstream(net: _Net, chain: Sequence[_Lane], distance: float) -> tuple[str, float]:
    """Lane and position ``distance`` metres before the end of ``chain[0]`` (clamped)."""
    del net
    rest = distance
    for lane in chain:
        if rest <= lane.length:
            return lane.id, lane.length - rest
        rest -= lane.length
    return chain[-1].id, 0.0


# --------------------------------------------------------------------------- assembly


def _walking_areas(net: _Net, crossing: str) -> tuple[str, ...]:
    was = set()
    for c in net.conns:
        if c.to_edge == crossing and _function(net, c.from_edge) == "walkingarea":
            was.add(c.from_edge)
        if c.from_edge == crossing and _function(net, c.to_edge) == "walkingarea":
            was.add(c.to_edge)
    return tuple(sorted(was))


def _build(
    *,
    name: str,
    directory: Path,
    net: _Net,
    tls_id: str,
    links: tuple[LinkInfo, ...],
    approaches: tuple[Approach, ...],
    group_defs: Sequence[tuple[SignalGroup, tuple[int, ...]]],
    stages: tuple[Stage, ...] | None,
    stage_order: Sequence[str],
    overlap_stages: tuple[Stage, ...] = (),
    official: Mapping[tuple[str, str], int],
    walking_speed: float,
    max_cycle_s: int,
    additional_files: tuple[Path, ...],
    detector_overrides: Mapping[str, Mapping[str, Any]],
    push_button_defs: Mapping[str, str],
    source: Path,
    derived_detector_lines: Sequence[str] = (),
) -> JunctionModel:
    groups = [g for g, _ in group_defs]
    link_group = {i: g.id for g in groups for i in g.links}
    unassigned = [link.index for link in links if link.index not in link_group]
    if unassigned:
        raise ConfigError(f"link indices {unassigned} belong to no signal group", source)
    foes = _link_foes(net, links)
    conflicts, conditional, minor = _classify_pairs(net, links, link_group, foes)
    calcs = _intergreens(
        net, links=links, groups=groups, conflicts=conflicts, link_foes=foes,
        walking_speed=walking_speed, official=official, source=source,
    )
    intergreen = {k: c.z_s for k, c in calcs.items()}
    if stages is None:
        stages = greedy_stages(groups, conflicts, stage_order)
    # No group may wait longer than the longest allowed cycle minus its own minimum green
    # (safety.md V5): that is the most any correct program can make it wait.
    groups = [
        dataclasses.replace(g, max_red_s=CYCLE_CEILING_S - g.min_green_s) for g in groups
    ]
    early_end = _early_ends(groups, conditional, intergreen)
    try:
        signals = JunctionSignals(
            tls_id=tls_id,
            groups=tuple(groups),
            conflicts=frozenset(conflicts),
            intergreen=intergreen,
            stages=stages,
            conditional=frozenset(conditional),
            link_count=len(links),
            max_cycle_s=max_cycle_s,
            early_end_s=early_end,
            overlap_stages=overlap_stages,
        )
    except ValueError as exc:
        raise ConfigError(str(exc), source) from exc
    uncovered = set(signals.group_ids) - {g for s in stages for g in s.groups}
    if uncovered:
        raise ConfigError(f"signal groups {sorted(uncovered)} are in no stage", source)
    group_in: dict[str, tuple[str, ...]] = {}
    group_out: dict[str, tuple[str, ...]] = {}
    lane_groups: dict[str, set[str]] = {}
    for g in groups:
        group_in[g.id] = tuple(sorted({links[i].from_lane for i in g.links}))
        group_out[g.id] = tuple(sorted({links[i].to_lane for i in g.links}))
        for i in g.links:
            lane_groups.setdefault(links[i].from_lane, set()).add(g.id)
    lane_groups_t = {k: tuple(sorted(v)) for k, v in lane_groups.items()}
    dets = _read_detectors(net, additional_files, approaches, lane_groups_t)
    det_ids = [d.id for d in dets]
    dets_by_id = {d.id: d for d in dets}
    for did, over in detector_overrides.items():
        if did not in dets_by_id:
            raise ConfigError(f"[detectors] {did!r} is not in the additional files", source)
        d = dets_by_id[did]
        try:
            dets_by_id[did] = DetectorInfo(
                d.id,
                DetectorKind(over.get("kind", d.kind)),
                str(over.get("approach", d.approach)),
                d.lanes,
                tuple(over.get("groups", d.groups)),
                d.distance_m,
                float(over.get("report_period_s", d.report_period_s)),
            )
        except ValueError as exc:
            raise ConfigError(f"[detectors] {did}: {exc}", source) from exc
    crossing_group = {
        links[i].crossing: g.id for g in groups for i in g.links if links[i].crossing
    }
    buttons: dict[str, PushButton] = {}
    for pid, crossing in push_button_defs.items():
        if crossing not in crossing_group:
            raise ConfigError(f"push-button {pid!r}: unknown crossing {crossing!r}", source)
        grp = crossing_group[crossing]
        buttons[pid] = PushButton(pid, crossing, _walking_areas(net, crossing), (grp,))
        arm = next(
            (a.id for a in approaches
             if set(net.edges[crossing].crossing_edges) & (set(a.in_edges) | set(a.out_edges))),
            "",
        )
        det_ids.append(pid)
        dets_by_id[pid] = DetectorInfo(pid, DetectorKind.PUSH_BUTTON, arm, (), (grp,), 0.0)
    return JunctionModel(
        name=name,
        directory=directory,
        net_file=net.path,
        additional_files=additional_files,
        signals=signals,
        approaches=approaches,
        detectors=tuple(dets_by_id[d] for d in det_ids),
        links=links,
        group_in_lanes=MappingProxyType(group_in),
        group_out_lanes=MappingProxyType(group_out),
        push_buttons=MappingProxyType(buttons),
        minor_links=frozenset(minor),
        walking_speed_mps=walking_speed,
        intergreen_calcs=MappingProxyType(calcs),
    )


def _function(net: _Net, edge: str) -> str:
    e = net.edges.get(edge)
    return e.function if e else ""


def _crossing_length(net: _Net, crossing: str) -> float:
    return net.lanes[f"{crossing}_0"].length


def _make_group(
    gid: str,
    *,
    kind: GroupKind,
    approach: Approach | None,
    links: tuple[int, ...],
    label: str,
    net: _Net,
    link_infos: Sequence[LinkInfo],
    walking_speed: float,
    overrides: Mapping[str, Any],
) -> SignalGroup:
    speed = approach.speed_kmh if approach else 50
    if kind is GroupKind.PEDESTRIAN:
        crossing = link_infos[links[0]].crossing or ""
        min_green = pedestrian_min_green(_crossing_length(net, crossing), walking_speed)
        yellow, red_yellow = 0, 0
    else:
        yellow, red_yellow = yellow_for_speed(speed), 1
        if kind is GroupKind.VEHICLE:
            min_green = 10 if (approach is None or approach.main) else 5
        else:
            min_green = 5
    return SignalGroup(
        id=gid,
        kind=kind,
        approach=approach.id if approach else "",
        links=tuple(sorted(links)),
        min_green_s=int(overrides.get("min_green_s", min_green)),
        yellow_s=int(overrides.get("yellow_s", yellow)),
        red_yellow_s=int(overrides.get("red_yellow_s", red_yellow)),
        speed_kmh=speed,
        label=label,
    )


# --------------------------------------------------------------------------- load


def _toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError("junction.toml not found", path) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"malformed TOML: {exc}", path) from exc


def _req(table: Mapping[str, Any], key: str, typ: type, path: Path, where: str) -> Any:
    if key not in table:
        raise ConfigError(f"{where}: missing {key!r}", path)
    value = table[key]
    if not isinstance(value, typ):
        raise ConfigError(f"{where}: {key!r} must be {typ.__name__}", path)
    return value


def _number(table: Mapping[str, Any], key: str, default: float, path: Path, where: str, *,
            integer: bool = True) -> Any:
    """An optional number of junction.toml; ``ConfigError`` naming it for anything else."""
    value = table.get(key, default)
    ok = isinstance(value, int) or (not integer and isinstance(value, float))
    if isinstance(value, bool) or not ok:
        what = "a whole number" if integer else "a number"
        raise ConfigError(f"{where}: {key!r} must be {what}, not {value!r}", path)
    return value


def load_junction(name_or_dir: str | Path, root: Path = SCENARIOS) -> JunctionModel:
    """Load ``<root>/<name>/junction.toml`` (or a directory holding one) against its network."""
    directory = Path(name_or_dir)
    if not directory.is_dir():
        directory = Path(root) / str(name_or_dir)
    cfg_path = directory / "junction.toml"
    cfg = _toml(cfg_path)
    name = str(cfg.get("name", directory.name))
    tls_id = _req(cfg, "tls_id", str, cfg_path, "top level")
    net_file = directory / _req(cfg, "net", str, cfg_path, "top level")
    net = _read_net_cached(net_file)
    additional = tuple(directory / str(f) for f in cfg.get("additional", []))
    for f in additional:
        if not f.is_file():
            raise ConfigError(f"additional file {f.name} does not exist", cfg_path)
    walking = float(_number(cfg, "walking_speed_mps", DEFAULT_WALKING_SPEED_MPS, cfg_path,
                            "top level", integer=False))
    if not WALKING_SPEED_RANGE[0] <= walking <= WALKING_SPEED_RANGE[1]:
        raise ConfigError(
            f"walking_speed_mps {walking} outside {WALKING_SPEED_RANGE[0]}-"
            f"{WALKING_SPEED_RANGE[1]} m/s", cfg_path
        )
    max_cycle = int(_number(cfg, "max_cycle_s", 90, cfg_path, "top level"))
    links = _links(net, tls_id)

    approaches: list[Approach] = []
    for k, a in enumerate(cfg.get("approaches", [])):
        where = f"approaches[{k}]"
        app = Approach(
            id=_req(a, "id", str, cfg_path, where),
            name=str(a.get("name", "")),
            in_edges=tuple(_req(a, "in_edges", list, cfg_path, where)),
            out_edges=tuple(_req(a, "out_edges", list, cfg_path, where)),
            speed_kmh=int(_number(a, "speed_kmh", 50, cfg_path, where)),
            main=bool(a.get("main", True)),
        )
        for e in app.in_edges + app.out_edges:
            if e not in net.edges:
                raise ConfigError(f"{where}: edge {e!r} is not in {net_file.name}", cfg_path)
        approaches.append(app)
    app_by_id = {a.id: a for a in approaches}

    group_tables = cfg.get("groups", {})
    if not isinstance(group_tables, dict) or not group_tables:
        raise ConfigError("no [groups] defined", cfg_path)
    group_defs: list[tuple[SignalGroup, tuple[int, ...]]] = []
    min_green_over = cfg.get("min_green", {})
    for gid, g in group_tables.items():
        where = f"[groups.{gid}]"
        try:
            kind = GroupKind(_req(g, "kind", str, cfg_path, where))
        except ValueError as exc:
            raise ConfigError(f"{where}: unknown kind {g.get('kind')!r}", cfg_path) from exc
        app_id = g.get("approach")
        if app_id is not None and app_id not in app_by_id:
            raise ConfigError(f"{where}: unknown approach {app_id!r}", cfg_path)
        sel = _select_links(g, links, where, cfg_path)
        overrides = {k: _number(g, k, 0, cfg_path, where)
                     for k in ("min_green_s", "yellow_s", "red_yellow_s") if k in g}
        if gid in min_green_over:
            overrides["min_green_s"] = _number(min_green_over, gid, 0, cfg_path, "[min_green]")
        grp = _make_group(
            gid, kind=kind, approach=app_by_id.get(app_id) if app_id else None, links=sel,
            label=str(g.get("label", "")), net=net, link_infos=links, walking_speed=walking,
            overrides=overrides,
        )
        group_defs.append((grp, sel))
    known = {g.id for g, _ in group_defs}
    stages: list[Stage] = []
    for sid, members in cfg.get("stages", {}).items():
        if not isinstance(members, list) or not set(members) <= known:
            raise ConfigError(f"[stages] {sid}: unknown groups {sorted(set(members) - known)}",
                              cfg_path)
        stages.append(Stage(sid, frozenset(members)))
    overlaps: list[Stage] = []
    for sid, members in cfg.get("overlap_stages", {}).items():
        if not isinstance(members, list) or not set(members) <= known:
            raise ConfigError(f"[overlap_stages] {sid}: unknown groups "
                              f"{sorted(set(members) - known)}", cfg_path)
        if not stages:
            raise ConfigError(f"[overlap_stages] {sid}: overlap stages need a [stages] table "
                              "whose consecutive stages they join", cfg_path)
        overlaps.append(Stage(sid, frozenset(members)))
    official: dict[tuple[str, str], int] = {}
    for key, z in cfg.get("intergreen", {}).items():
        m = re.fullmatch(r"\s*(\w+)\s*->\s*(\w+)\s*", key)
        if not m or not isinstance(z, int) or m.group(1) not in known or m.group(2) not in known:
            raise ConfigError(f"[intergreen] bad entry {key!r} = {z!r}", cfg_path)
        official[(m.group(1), m.group(2))] = z
    buttons = {
        pid: str(_req(v, "crossing", str, cfg_path, f"[push_buttons.{pid}]"))
        for pid, v in cfg.get("push_buttons", {}).items()
    }
    return _build(
        name=name, directory=directory, net=net, tls_id=tls_id, links=links,
        approaches=tuple(approaches), group_defs=group_defs,
        stages=tuple(stages) if stages else None, stage_order=[g.id for g, _ in group_defs],
        overlap_stages=tuple(overlaps),
        official=official, walking_speed=walking, max_cycle_s=max_cycle,
        additional_files=additional, detector_overrides=cfg.get("detectors", {}),
        push_button_defs=buttons, source=cfg_path,
    )


def _select_links(
    g: Mapping[str, Any], links: Sequence[LinkInfo], where: str, path: Path
) -> tuple[int, ...]:
    """Link indices a group's selector picks (explicit ``links``, a ``crossing``, or edge rules)."""
    if "links" in g:
        sel = tuple(int(i) for i in g["links"])
    elif "crossing" in g:
        sel = tuple(link.index for link in links if link.crossing == g["crossing"])
    elif "from_edge" in g:
        dirs = set(g.get("directions", [])) or None
        vclass = g.get("vclass")
        exclusive = bool(g.get("exclusive", False))
        sel = tuple(
            link.index for link in links
            if link.crossing is None
            and link.from_edge == g["from_edge"]
            and (dirs is None or link.direction in dirs)
            and (vclass is None or vclass in link.vclasses)
            and (not exclusive or set(link.vclasses) == {vclass})
        )
    else:
        raise ConfigError(f"{where}: needs links, crossing or from_edge", path)
    if not sel:
        raise ConfigError(f"{where}: selects no link of the traffic light", path)
    if any(not 0 <= i < len(links) for i in sel):
        raise ConfigError(f"{where}: link index outside 0..{len(links) - 1}", path)
    return sel


# --------------------------------------------------------------------------- derive


_COMPASS = ("N", "E", "S", "W")


def _derive_approaches(net: _Net, links: Sequence[LinkInfo]) -> tuple[Approach, ...]:
    in_edges = sorted({link.from_edge for link in links if link.crossing is None})
    out_edges = {link.to_edge for link in links if link.crossing is None}
    node_xy: dict[str, tuple[float, float]] = {
        j: (float(el.get("x", "0")), float(el.get("y", "0"))) for j, el in net.junctions.items()
    }

    def bearing(edge: _Edge, upstream: bool) -> float:
        a = node_xy.get(edge.to_node if upstream else edge.from_node, (0.0, 0.0))
        b = node_xy.get(edge.from_node if upstream else edge.to_node, (0.0, 0.0))
        return math.degrees(math.atan2(b[0] - a[0], b[1] - a[1])) % 360.0

    arms: list[tuple[float, str, list[str], list[str]]] = []
    for e in in_edges:
        edge = net.edges[e]
        chain = [e]
        length = edge.lanes[0].length if edge.lanes else 0.0
        while length < 300:
            preds = [c.from_edge for c in net.conns
                     if c.to_edge == chain[0] and net.edges[c.from_edge].function == "normal"]
            preds = sorted(set(preds))
            if len(preds) != 1 or preds[0] in chain:
                break
            up = net.edges[preds[0]]
            if len([c for c in net.conns if c.from_edge == up.id
                    and net.edges[c.to_edge].function == "normal"
                    and c.to_edge != chain[0]]) > 0:
                break
            chain.insert(0, preds[0])
            length += up.lanes[0].length if up.lanes else 0.0
        arms.append((bearing(edge, True), e, chain, []))
    for o in sorted(out_edges):
        b = bearing(net.edges[o], False)
        best = min(arms, key=lambda a: min(abs(a[0] - b), 360 - abs(a[0] - b)), default=None)
        if best is not None and min(abs(best[0] - b), 360 - abs(best[0] - b)) < 30:
            best[3].append(o)
    arms.sort()
    letters = [_COMPASS[round(a[0] / 90.0) % 4] for a in arms]
    unique = len(set(letters)) == len(letters)
    out: list[Approach] = []
    for (_, e, chain, outs), letter in zip(arms, letters, strict=True):
        edge = net.edges[e]
        out.append(Approach(
            id=letter if unique else e,
            name=edge.name or e,
            in_edges=tuple(chain),
            out_edges=tuple(sorted(outs)),
            speed_kmh=50,
            main=edge.priority >= max(net.edges[x].priority for x in in_edges),
        ))
    return tuple(out)


def derive_junction(
    net_file: Path,
    tls_id: str,
    *,
    additional_files: Sequence[Path] = (),
    out_dir: Path | None = None,
    walking_speed_mps: float = DEFAULT_WALKING_SPEED_MPS,
    max_cycle_s: int | None = None,
) -> JunctionModel:
    """Junction model for any SUMO network and traffic light id.

    Signal groups per incoming edge: lanes whose links all turn left (or
    U-turn) form the left group, the other motor lanes the through+right
    group, bicycle-only lanes their own group; each crossing is a pedestrian
    group.  Detectors come from ``additional_files``; when those hold none,
    defaults are placed (and written to ``out_dir/<tls_id>.det.add.xml`` when
    ``out_dir`` is given).  Without ``max_cycle_s`` the maximum cycle is
    ``derived_max_cycle_s`` of the derived stages.
    """
    net = _read_net_cached(Path(net_file))
    links = _links(net, tls_id)
    approaches = _derive_approaches(net, links)
    app_of = {e: a for a in approaches for e in a.in_edges}
    lane_links: dict[str, list[LinkInfo]] = {}
    for link in links:
        lane_links.setdefault(link.from_lane, []).append(link)

    through: list[tuple[SignalGroup, tuple[int, ...]]] = []
    lefts: list[tuple[SignalGroup, tuple[int, ...]]] = []
    bikes: list[tuple[SignalGroup, tuple[int, ...]]] = []
    peds: list[tuple[SignalGroup, tuple[int, ...]]] = []
    for a in approaches:
        e = a.in_edges[-1]
        t_links: list[int] = []
        l_links: list[int] = []
        b_links: list[int] = []
        # Lanes whose links all turn left form the left group; shared lanes stay with through.
        for lane in net.edges[e].lanes:
            ls = lane_links.get(lane.id, [])
            if not ls:
                continue
            if all(_is_bicycle_only(x) for x in ls):
                b_links += [x.index for x in ls]
            elif all(x.direction in _LEFTS for x in ls):
                l_links += [x.index for x in ls]
            else:
                t_links += [x.index for x in ls]
        for bucket, sel, kind, label in (
            (through, t_links, GroupKind.VEHICLE, f"{a.id} through+right"),
            (lefts, l_links, GroupKind.VEHICLE, f"{a.id} left"),
            (bikes, b_links, GroupKind.BICYCLE, f"{a.id} bicycles"),
        ):
            if sel:
                bucket.append((_make_group(
                    "", kind=kind, approach=a, links=tuple(sel), label=label, net=net,
                    link_infos=links, walking_speed=walking_speed_mps, overrides={},
                ), tuple(sel)))
    unassigned_vehicle = [
        x.index for x in links if x.crossing is None and x.from_edge not in app_of
    ]
    if unassigned_vehicle:
        raise ConfigError(f"links {unassigned_vehicle} come from no approach", net.path)
    crossings = sorted({x.crossing for x in links if x.crossing})
    for c in crossings:
        csel = tuple(x.index for x in links if x.crossing == c)
        arm = next((a for a in approaches
                    if set(net.edges[c].crossing_edges) & (set(a.in_edges) | set(a.out_edges))),
                   None)
        label = f"crossing {arm.id if arm else c}"
        peds.append((_make_group(
            "", kind=GroupKind.PEDESTRIAN, approach=arm, links=csel, label=label, net=net,
            link_infos=links, walking_speed=walking_speed_mps, overrides={},
        ), csel))
    # Naming as in RiLSA plans: K vehicles, R bicycles, F pedestrians.
    named: list[tuple[SignalGroup, tuple[int, ...]]] = []
    for prefix, bucket_groups in (("K", [*through, *lefts]), ("R", bikes), ("F", peds)):
        for n, (g, gsel) in enumerate(bucket_groups, 1):
            named.append((_renamed(g, f"{prefix}{n}"), gsel))
    order = [g.id for g, _ in named]

    det_files = tuple(Path(f) for f in additional_files)
    have_detectors = any(
        el.tag in ("inductionLoop", "e1Detector", "laneAreaDetector", "e2Detector")
        for f in det_files if f.is_file() for el in _xml_root(f)
    )
    if not have_detectors:
        lines, _ = _default_detectors(net, approaches, links)
        if out_dir is not None:
            out_dir = Path(out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            det_path = out_dir / f"{_xml_id(tls_id)}.det.add.xml"
            det_path.write_text(
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                "<!-- Default detectors placed by sim.junction.derive_junction. -->\n"
                "<additional>\n" + "\n".join(lines) + "\n</additional>\n",
                encoding="utf-8",
            )
            det_files = (*det_files, det_path)
    buttons = {f"{g.id}_pb": links[sel[0]].crossing or ""
               for g, sel in named if g.kind is GroupKind.PEDESTRIAN}
    model = _build(
        name=tls_id, directory=Path(out_dir) if out_dir else net.path.parent, net=net,
        tls_id=tls_id, links=links, approaches=approaches, group_defs=named, stages=None,
        stage_order=order, official={}, walking_speed=walking_speed_mps,
        max_cycle_s=CYCLE_CEILING_S if max_cycle_s is None else max_cycle_s,
        additional_files=det_files, detector_overrides={}, push_button_defs=buttons,
        source=net.path,
    )
    model = _order_stages(model, approaches)
    minimum = _minimum_plan(model.signals)
    if max_cycle_s is None:
        cycle = derived_max_cycle_s(minimum.cycle_s)
        model = dataclasses.replace(
            model, signals=dataclasses.replace(model.signals, max_cycle_s=cycle))
    _check_minimum_plan(model.signals, minimum, net.path)
    return model


def _minimum_plan(signals: JunctionSignals) -> SignalProgram:
    """Every stage at its minimum green, with the transitions (Zwischenzeiten) between."""
    seq = tuple(s.id for s in signals.stages)
    return compile_plan(signals, StagePlan(seq, stage_min_greens(signals, seq)), "minimum")


def _check_minimum_plan(signals: JunctionSignals, minimum: SignalProgram, source: Path) -> None:
    """Refuse derived stages that no plan can run safely: not even every stage at its
    minimum green passes the safety rules (too many stages for the maximum cycle and
    the maximum red)."""
    broken = validate_program(signals, minimum)
    if broken:
        shown = "; ".join(v.message for v in broken[:3])
        raise ConfigError(
            f"the {len(signals.stages)} derived stages take {minimum.cycle_s} s at their "
            f"minimum greens, and even that plan breaks the safety rules ({shown}); describe "
            "the junction in a junction.toml with stages that combine compatible movements "
            "(docs/junction.md)",
            source,
        )


def derived_max_cycle_s(minimum_cycle_s: int) -> int:
    """Maximum cycle for derived stages: 90 s, or their minimum cycle plus 30 s of room.

    The minimum cycle is every stage at its minimum green plus the transitions
    of the stage sequence.  A junction with many stages (five arms, one stage
    each) fills 90 s with minimum greens alone, and no controller could move a
    second; it gets up to the validator's ceiling (120 s) instead.
    """
    return min(CYCLE_CEILING_S, max(DERIVED_MAX_CYCLE_S, minimum_cycle_s + DERIVED_CYCLE_ROOM_S))


def _early_ends(
    groups: Sequence[SignalGroup],
    conditional: Iterable[frozenset[str]],
    intergreen: Mapping[tuple[str, str], int],
) -> dict[str, int]:
    """Räumzeitvorgabe for pedestrian groups that right-turners cross (bedingt verträglich).

    A turning vehicle waits inside the junction for pedestrians on the crossing; once its
    own signal ends it no longer yields (SUMO, and drivers, treat a red pedestrian signal
    as clear).  So the pedestrian green ends early by the pedestrians' clearance time (the
    largest intergreen from the pedestrian group), and the turners keep their yielding
    green while the last pedestrians leave the crossing.
    """
    kinds = {g.id: g.kind for g in groups}
    partners: dict[str, set[str]] = {}
    for pair in conditional:
        a, b = sorted(pair)
        for p, q in ((a, b), (b, a)):
            if kinds.get(p) is GroupKind.PEDESTRIAN and kinds.get(q) is not GroupKind.PEDESTRIAN:
                partners.setdefault(p, set()).add(q)
    out: dict[str, int] = {}
    for p in partners:
        clear = max((z for (i, _j), z in intergreen.items() if i == p), default=0)
        if clear > 0:
            out[p] = clear
    return out


def _xml_root(path: Path) -> Iterable[ET.Element]:
    try:
        return list(ET.parse(path).getroot())
    except (ET.ParseError, OSError) as exc:
        raise ConfigError(f"cannot read additional file: {exc}", path) from exc


def _renamed(g: SignalGroup, gid: str) -> SignalGroup:
    return SignalGroup(
        gid, g.kind, g.approach, g.links, g.min_green_s, g.yellow_s, g.red_yellow_s,
        g.max_red_s, g.speed_kmh, g.label,
    )


def _order_stages(model: JunctionModel, approaches: Sequence[Approach]) -> JunctionModel:
    """Order derived stages as engineers do: each through stage followed by its lefts."""
    rank = {a.id: k for k, a in enumerate(approaches)}
    sig = model.signals

    def key(st: Stage) -> tuple[int, int]:
        veh = [sig.group(g) for g in st.groups if sig.group(g).kind is GroupKind.VEHICLE]
        # Opposite arms share a stage: rank by the smaller of each pair of opposites.
        arms = [rank.get(g.approach, 99) % 2 if len(approaches) == 4 else rank.get(g.approach, 99)
                for g in veh]
        left = all(g.label.endswith("left") for g in veh) if veh else True
        return (min(arms, default=99), int(left))

    ordered = sorted(sig.stages, key=key)
    stages = tuple(Stage(f"P{k + 1}", s.groups) for k, s in enumerate(ordered))
    signals = JunctionSignals(
        tls_id=sig.tls_id, groups=sig.groups, conflicts=sig.conflicts,
        intergreen=sig.intergreen, stages=stages, conditional=sig.conditional,
        link_count=sig.link_count, max_cycle_s=sig.max_cycle_s, early_end_s=sig.early_end_s,
    )
    return JunctionModel(
        name=model.name, directory=model.directory, net_file=model.net_file,
        additional_files=model.additional_files, signals=signals,
        approaches=model.approaches, detectors=model.detectors, links=model.links,
        group_in_lanes=model.group_in_lanes, group_out_lanes=model.group_out_lanes,
        push_buttons=model.push_buttons, minor_links=model.minor_links,
        walking_speed_mps=model.walking_speed_mps, intergreen_calcs=model.intergreen_calcs,
    )


def intergreen_table(model: JunctionModel) -> str:
    """The intergreen matrix as a fixed-width text table (rows ending, columns starting)."""
    ids = model.signals.group_ids
    width = max(4, *(len(i) for i in ids)) + 1
    lines = [" " * width + "".join(f"{j:>{width}}" for j in ids)]
    for i in ids:
        cells = []
        for j in ids:
            z = model.signals.intergreen.get((i, j))
            cells.append(f"{'-' if z is None else z:>{width}}")
        lines.append(f"{i:<{width}}" + "".join(cells))
    return "\n".join(lines)
