"""Demand scenarios (Verkehrsnachfrage) from TOML files, and SUMO route generation.

A scenario file ``scenarios/<name>.toml`` says who arrives at the junction and
when: vehicle flows per origin-destination pair of arms (Verkehrsströme, in
vehicles per hour), the vehicle mix, scheduled bus lines (ÖPNV-Linien) with
their stops, bicycle and pedestrian flows, demand periods (Zeitscheiben) that
scale the flows, and events (a lane closure, a surge).  docs/scenarios.md
describes the format with an annotated example.

``write_demand`` turns a scenario into SUMO route files with explicit
departures drawn from a Poisson process per time slice, so one seed always
gives byte-identical files and different seeds give different traffic.
``movement_flows`` gives the mean flows an engineer would know for a period
(the input for tuning a fixed-time plan with Webster's method).
"""

from __future__ import annotations

import itertools
import math
import re
import tomllib
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET
from xml.sax.saxutils import quoteattr

import numpy as np

from controller.errors import ConfigError

#: Default folder of scenario files: ``<repo>/scenarios``.
SCENARIO_ROOT = Path(__file__).resolve().parent.parent / "scenarios"

#: Arms (Knotenpunktzufahrten) by compass direction; SUMO edges ``A_in`` / ``A_out``.
ARMS: tuple[str, ...] = ("N", "E", "S", "W")
#: Modes ``movement_flows`` reports; vans count as cars (about one passenger car unit).
MODES: tuple[str, ...] = ("car", "truck", "bus", "bicycle", "pedestrian")

_ID_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_OD_RE = re.compile(r"^\s*([A-Za-z]+)\s*->\s*([A-Za-z]+)\s*$")
_STOP_RE = re.compile(r"^bus_([A-Z]+)_(in|out)$")
_EMISSION_PREFIXES = ("HBEFA3/", "HBEFA4/", "PHEMlight/", "PHEMlight5/", "MMPEVEM", "Energy")

OD = tuple[str, str]


# --------------------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class VehicleType:
    """A SUMO vType: vehicle class, HBEFA emission class and persons on board."""

    id: str
    vclass: str
    mode: str
    emission_class: str
    occupancy: float
    length_m: float | None = None
    max_speed_mps: float | None = None
    sigma: float | None = None
    color: str = ""


@dataclass(frozen=True, slots=True)
class Flow:
    """A flow between two arms in road users per hour."""

    origin: str
    destination: str
    per_hour: float

    @property
    def od(self) -> OD:
        return (self.origin, self.destination)


@dataclass(frozen=True, slots=True)
class Period:
    """Zeitscheibe: a time slice in which base flows are scaled by ``factor``.

    Flows listed explicitly for the period replace ``base * factor`` for their
    OD pair (per mode); they are not scaled again.
    """

    begin_s: float
    end_s: float
    factor: float = 1.0
    vehicles: tuple[Flow, ...] = ()
    bicycles: tuple[Flow, ...] = ()
    pedestrians: tuple[Flow, ...] = ()


@dataclass(frozen=True, slots=True)
class Surge:
    """Extra flows on top of the period flows during ``[begin_s, end_s)``."""

    begin_s: float
    end_s: float
    vehicles: tuple[Flow, ...] = ()
    bicycles: tuple[Flow, ...] = ()
    pedestrians: tuple[Flow, ...] = ()


@dataclass(frozen=True, slots=True)
class LaneClosure:
    """Fahrstreifensperrung: lane ``lane`` of SUMO edge ``edge`` closed to all vehicles."""

    edge: str
    lane: int
    begin_s: float
    end_s: float

    @property
    def lane_id(self) -> str:
        return f"{self.edge}_{self.lane}"


@dataclass(frozen=True, slots=True)
class BusLine:
    """One direction of a scheduled bus line (Buslinie) through the junction.

    ``departures_s`` are the timetable times the bus enters the model; each run
    may be late by up to ``jitter_s`` (uniform, drawn per seed).  ``dwell_s``
    holds one dwell time per stop in ``stops``.
    """

    line: str
    origin: str
    destination: str
    departures_s: tuple[float, ...]
    stops: tuple[str, ...]
    dwell_s: tuple[float, ...]
    occupancy: float
    jitter_s: float = 0.0

    @property
    def vtype_id(self) -> str:
        return f"bus_{self.line}_{self.origin}{self.destination}"


@dataclass(frozen=True)
class Scenario:
    """A demand scenario as loaded from ``scenarios/<name>.toml``.

    Times are simulation seconds.  KPIs count only ``[begin_s + warmup_s, end_s)``.
    """

    name: str
    title: str
    description: str
    junction: str
    path: Path
    begin_s: float
    end_s: float
    warmup_s: float
    periods: tuple[Period, ...]
    vehicles: tuple[Flow, ...]
    truck_share: float
    van_share: float
    bicycles: tuple[Flow, ...]
    pedestrians: tuple[Flow, ...]
    bus_lines: tuple[BusLine, ...]
    surges: tuple[Surge, ...]
    closures: tuple[LaneClosure, ...]
    types: tuple[VehicleType, ...]

    @property
    def measure_begin_s(self) -> float:
        return self.begin_s + self.warmup_s

    def vtype(self, type_id: str) -> VehicleType:
        for t in self.types:
            if t.id == type_id:
                return t
        raise KeyError(type_id)


@dataclass(frozen=True)
class DemandFiles:
    """Files ``write_demand`` wrote: pass route files to ``-r`` and additionals to ``-a``.

    The junction's own bus stops (``scenarios/<junction>/busstops.add.xml``) are
    not included: they belong to the network and must be loaded before these.
    """

    route_files: tuple[Path, ...]
    additional_files: tuple[Path, ...]


#: Default vehicle types; a scenario's ``[types.<id>]`` tables override fields.
#: Emission classes are names SUMO 1.28 knows (checked by a test that loads them).
_DEFAULT_TYPES: dict[str, VehicleType] = {
    t.id: t
    for t in (
        VehicleType("car", "passenger", "car", "HBEFA4/PC_petrol_Euro-6ab", 1.3, color="yellow"),
        VehicleType("van", "delivery", "car", "HBEFA4/LCV_diesel_N1-III_Euro-6ab", 1.2,
                    length_m=6.5, color="white"),
        VehicleType("truck", "truck", "truck", "HBEFA4/RT_gt14-20t_Euro-VI_D-E", 1.0,
                    length_m=10.0, max_speed_mps=22.2, color="grey"),
        VehicleType("bus", "bus", "bus", "HBEFA4/UBus_Std_gt15-18t_Euro-VI_D-E", 20.0,
                    length_m=12.0, color="red"),
        VehicleType("bicycle", "bicycle", "bicycle", "HBEFA4/zero", 1.0, color="green"),
        VehicleType("pedestrian", "pedestrian", "pedestrian", "HBEFA4/zero", 1.0, color="blue"),
    )
}
_TYPE_KEYS = {"emission_class", "occupancy", "length_m", "max_speed_mps", "sigma", "color"}


# --------------------------------------------------------------------------- loading


class _Reader:
    """Strict access to one TOML file: every problem names the file and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, problem: str) -> ConfigError:
        return ConfigError(problem, self.path)

    def table(self, value: object, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(f"{where} must be a table")
        return value

    def keys(self, table: Mapping[str, Any], where: str, allowed: Iterable[str],
             required: Iterable[str] = ()) -> None:
        allowed_set = set(allowed)
        unknown = sorted(set(table) - allowed_set)
        if unknown:
            raise self.fail(
                f"unknown key(s) {', '.join(unknown)} in {where} "
                f"(allowed: {', '.join(sorted(allowed_set))})"
            )
        missing = [k for k in required if k not in table]
        if missing:
            raise self.fail(f"missing key(s) {', '.join(missing)} in {where}")

    def number(self, value: object, where: str, *, minimum: float | None = 0.0) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(f"{where} must be a number, got {value!r}")
        out = float(value)
        if not math.isfinite(out):
            raise self.fail(f"{where} must be finite")
        if minimum is not None and out < minimum:
            raise self.fail(f"{where} must be >= {minimum:g}, got {out:g}")
        return out

    def string(self, value: object, where: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"{where} must be a non-empty string")
        return value

    def arm(self, value: str, where: str) -> str:
        if value not in ARMS:
            raise self.fail(f"unknown arm {value!r} in {where} (arms: {', '.join(ARMS)})")
        return value

    def od(self, key: str, where: str) -> OD:
        m = _OD_RE.match(key)
        if m is None:
            raise self.fail(f"flow key {key!r} in {where} must look like \"N->S\"")
        return self.arm(m.group(1), where), self.arm(m.group(2), where)

    def flows(self, value: object, where: str, *, same_arm: bool) -> tuple[Flow, ...]:
        table = self.table(value, where)
        out: dict[OD, Flow] = {}
        for key, raw in table.items():
            o, d = self.od(key, where)
            if o == d and not same_arm:
                raise self.fail(f"flow {key!r} in {where}: U-turns are not modelled")
            if (o, d) in out:
                raise self.fail(f"flow {o}->{d} given twice in {where}")
            out[(o, d)] = Flow(o, d, self.number(raw, f"{where} {key!r} (per hour)"))
        return tuple(out[k] for k in sorted(out))

    def window(self, table: Mapping[str, Any], where: str, lo: float, hi: float,
               ) -> tuple[float, float]:
        begin = self.number(table["begin_s"], f"{where}.begin_s", minimum=None)
        end = self.number(table["end_s"], f"{where}.end_s", minimum=None)
        if end <= begin:
            raise self.fail(f"{where}: end_s {end:g} must be after begin_s {begin:g}")
        if begin < lo or end > hi:
            raise self.fail(
                f"{where}: [{begin:g}, {end:g}) lies outside the scenario [{lo:g}, {hi:g})"
            )
        return begin, end


_TOP_KEYS = {
    "title", "description", "junction", "begin_s", "end_s", "warmup_s", "periods",
    "vehicles", "bicycles", "pedestrians", "bus_lines", "events", "types",
}


def load_scenario(name_or_path: str | Path, root: Path = SCENARIO_ROOT) -> Scenario:
    """Load and validate a scenario by name (file stem under ``root``) or by path.

    Raises ``ConfigError`` naming the file and the problem for anything
    inconsistent, including keys the format does not know.
    """
    as_path = Path(name_or_path)
    if as_path.suffix == ".toml" or len(as_path.parts) > 1:
        path = as_path
    else:
        path = Path(root) / f"{name_or_path}.toml"
    if not path.is_file():
        known = ", ".join(list_scenarios(root)) if Path(root).is_dir() else "none"
        raise ConfigError(f"no such scenario file (known scenarios: {known})", path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"not valid TOML: {exc}", path) from exc
    return _parse(data, path)


def list_scenarios(root: Path = SCENARIO_ROOT) -> list[str]:
    """Names of the scenario files directly under ``root``, sorted."""
    return sorted(p.stem for p in Path(root).glob("*.toml") if p.is_file())


def _parse(data: dict[str, Any], path: Path) -> Scenario:
    r = _Reader(path)
    r.keys(data, "the scenario", _TOP_KEYS,
           required=("title", "junction", "begin_s", "end_s", "warmup_s", "vehicles"))
    title = r.string(data["title"], "title")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise r.fail("description must be a string")
    junction = r.string(data["junction"], "junction")
    if not _ID_RE.match(junction):
        raise r.fail(f"junction {junction!r} must be a folder name under scenarios/")
    begin = r.number(data["begin_s"], "begin_s")
    end = r.number(data["end_s"], "end_s")
    warmup = r.number(data["warmup_s"], "warmup_s")
    if end <= begin:
        raise r.fail(f"end_s {end:g} must be after begin_s {begin:g}")
    if begin + warmup >= end:
        raise r.fail(f"warm-up of {warmup:g} s leaves no measured time before end_s {end:g}")

    veh = r.table(data["vehicles"], "[vehicles]")
    r.keys(veh, "[vehicles]", {"flows", "truck_share", "van_share"}, required=("flows",))
    vehicles = r.flows(veh["flows"], "[vehicles.flows]", same_arm=False)
    truck_share = r.number(veh.get("truck_share", 0.0), "vehicles.truck_share")
    van_share = r.number(veh.get("van_share", 0.0), "vehicles.van_share")
    if truck_share + van_share > 1.0:
        raise r.fail("vehicles.truck_share + vehicles.van_share exceed 1")

    bicycles = _mode_flows(r, data, "bicycles", same_arm=False)
    pedestrians = _mode_flows(r, data, "pedestrians", same_arm=True)
    periods = _periods(r, data.get("periods"), begin, end)
    surges, closures = _events(r, data.get("events", []), begin, end)
    bus_lines = _bus_lines(r, data.get("bus_lines", []), begin, end)
    types = _types(r, data.get("types", {}), bus_lines)
    return Scenario(
        name=path.stem, title=title, description=description.strip(), junction=junction,
        path=path, begin_s=begin, end_s=end, warmup_s=warmup, periods=periods,
        vehicles=vehicles, truck_share=truck_share, van_share=van_share, bicycles=bicycles,
        pedestrians=pedestrians, bus_lines=bus_lines, surges=surges, closures=closures,
        types=types,
    )


def _mode_flows(r: _Reader, data: Mapping[str, Any], key: str, *, same_arm: bool,
                ) -> tuple[Flow, ...]:
    if key not in data:
        return ()
    table = r.table(data[key], f"[{key}]")
    r.keys(table, f"[{key}]", {"flows"}, required=("flows",))
    return r.flows(table["flows"], f"[{key}.flows]", same_arm=same_arm)


def _array(r: _Reader, value: object, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise r.fail(f"{where} must be an array of tables ([[{where}]])")
    return [r.table(item, f"{where}[{k}]") for k, item in enumerate(value)]


def _periods(r: _Reader, raw: object, begin: float, end: float) -> tuple[Period, ...]:
    if raw is None:
        return (Period(begin, end, 1.0),)
    out: list[Period] = []
    for k, t in enumerate(_array(r, raw, "periods")):
        where = f"periods[{k}]"
        r.keys(t, where, {"begin_s", "end_s", "factor", "vehicles", "bicycles", "pedestrians"},
               required=("begin_s", "end_s"))
        b, e = r.window(t, where, begin, end)
        out.append(Period(
            b, e, r.number(t.get("factor", 1.0), f"{where}.factor"),
            r.flows(t.get("vehicles", {}), f"{where}.vehicles", same_arm=False),
            r.flows(t.get("bicycles", {}), f"{where}.bicycles", same_arm=False),
            r.flows(t.get("pedestrians", {}), f"{where}.pedestrians", same_arm=True),
        ))
    if not out:
        raise r.fail("periods is empty; leave it out for one period with factor 1")
    out.sort(key=lambda p: p.begin_s)
    for p1, p2 in itertools.pairwise(out):
        if p2.begin_s < p1.end_s:
            raise r.fail(
                f"periods overlap: [{p1.begin_s:g}, {p1.end_s:g}) and "
                f"[{p2.begin_s:g}, {p2.end_s:g})"
            )
        if p2.begin_s > p1.end_s:
            raise r.fail(f"periods leave a gap [{p1.end_s:g}, {p2.begin_s:g})")
    if out[0].begin_s != begin or out[-1].end_s != end:
        raise r.fail(
            f"periods cover [{out[0].begin_s:g}, {out[-1].end_s:g}) but the scenario runs "
            f"[{begin:g}, {end:g}); they must cover it without gaps"
        )
    return tuple(out)


def _events(r: _Reader, raw: object, begin: float, end: float,
            ) -> tuple[tuple[Surge, ...], tuple[LaneClosure, ...]]:
    surges: list[Surge] = []
    closures: list[LaneClosure] = []
    for k, t in enumerate(_array(r, raw, "events")):
        where = f"events[{k}]"
        kind = t.get("kind")
        if kind == "surge":
            r.keys(t, where, {"kind", "begin_s", "end_s", "vehicles", "bicycles", "pedestrians"},
                   required=("begin_s", "end_s"))
            b, e = r.window(t, where, begin, end)
            surge = Surge(
                b, e,
                r.flows(t.get("vehicles", {}), f"{where}.vehicles", same_arm=False),
                r.flows(t.get("bicycles", {}), f"{where}.bicycles", same_arm=False),
                r.flows(t.get("pedestrians", {}), f"{where}.pedestrians", same_arm=True),
            )
            if not (surge.vehicles or surge.bicycles or surge.pedestrians):
                raise r.fail(f"{where}: a surge needs vehicles, bicycles or pedestrians flows")
            surges.append(surge)
        elif kind == "lane_closure":
            r.keys(t, where, {"kind", "edge", "lane", "begin_s", "end_s"},
                   required=("edge", "lane", "begin_s", "end_s"))
            edge = r.string(t["edge"], f"{where}.edge")
            lane = t["lane"]
            if isinstance(lane, bool) or not isinstance(lane, int) or lane < 0:
                raise r.fail(f"{where}.lane must be a lane index >= 0, got {lane!r}")
            b, e = r.window(t, where, begin, end)
            closures.append(LaneClosure(edge, lane, b, e))
        else:
            raise r.fail(f"{where}.kind must be \"surge\" or \"lane_closure\", got {kind!r}")
    return tuple(surges), tuple(closures)


def _bus_lines(r: _Reader, raw: object, begin: float, end: float) -> tuple[BusLine, ...]:
    out: list[BusLine] = []
    for k, t in enumerate(_array(r, raw, "bus_lines")):
        where = f"bus_lines[{k}]"
        r.keys(t, where, {"line", "route", "headway_s", "first_s", "last_s", "times_s",
                          "stops", "dwell_s", "occupancy", "jitter_s"},
               required=("line", "route", "occupancy"))
        line = r.string(t["line"], f"{where}.line")
        if not _ID_RE.match(line):
            raise r.fail(f"{where}.line {line!r} may only hold letters, digits, _ and -")
        o, d = r.od(r.string(t["route"], f"{where}.route"), f"{where}.route")
        if o == d:
            raise r.fail(f"{where}.route: a bus line must leave by another arm")
        if ("headway_s" in t) == ("times_s" in t):
            raise r.fail(f"{where}: give either headway_s or times_s")
        if "times_s" in t:
            if any(key in t for key in ("first_s", "last_s")):
                raise r.fail(f"{where}: first_s/last_s only go with headway_s")
            times_raw = t["times_s"]
            if not isinstance(times_raw, list) or not times_raw:
                raise r.fail(f"{where}.times_s must be a non-empty list of seconds")
            times = sorted(r.number(x, f"{where}.times_s", minimum=None) for x in times_raw)
        else:
            headway = r.number(t["headway_s"], f"{where}.headway_s")
            if headway < 60:
                raise r.fail(f"{where}.headway_s {headway:g} is below 60 s")
            first = r.number(t.get("first_s", begin), f"{where}.first_s", minimum=None)
            last = r.number(t.get("last_s", end), f"{where}.last_s", minimum=None)
            if last < first:
                raise r.fail(f"{where}: last_s before first_s")
            n = math.floor((last - first) / headway + 1e-9) + 1
            times = [first + i * headway for i in range(n)]
            times = [x for x in times if x < end]
        if any(x < begin or x >= end for x in times):
            raise r.fail(f"{where}: departures must lie in [{begin:g}, {end:g})")
        stops_raw = t.get("stops", [f"bus_{o}_in", f"bus_{d}_out"])
        if not isinstance(stops_raw, list):
            raise r.fail(f"{where}.stops must be a list of bus stop ids")
        stops = tuple(r.string(s, f"{where}.stops") for s in stops_raw)
        _check_stops(r, stops, o, d, where)
        dwell = _dwell(r, t.get("dwell_s", 20.0), stops, where)
        out.append(BusLine(
            line=line, origin=o, destination=d, departures_s=tuple(times), stops=stops,
            dwell_s=dwell, occupancy=r.number(t["occupancy"], f"{where}.occupancy"),
            jitter_s=r.number(t.get("jitter_s", 0.0), f"{where}.jitter_s"),
        ))
    ids = [b.vtype_id for b in out]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise r.fail(f"bus line direction given twice: {', '.join(dup)}")
    return tuple(out)


def _check_stops(r: _Reader, stops: tuple[str, ...], o: str, d: str, where: str) -> None:
    """A bus passes only the incoming stop of its origin arm and the outgoing stop of its
    destination arm, in that order (the contract names no other stops)."""
    allowed = [f"bus_{o}_in", f"bus_{d}_out"]
    for s in stops:
        m = _STOP_RE.match(s)
        if m is None:
            raise r.fail(f"{where}.stops: {s!r} is not a bus stop id like \"bus_N_in\"")
        r.arm(m.group(1), f"{where}.stops")
        if s not in allowed:
            raise r.fail(f"{where}.stops: {s!r} is not on the route {o}->{d}")
    if len(set(stops)) != len(stops) or list(stops) != [s for s in allowed if s in stops]:
        raise r.fail(f"{where}.stops must be {allowed} or a part of it, in route order")


def _dwell(r: _Reader, raw: object, stops: tuple[str, ...], where: str) -> tuple[float, ...]:
    if isinstance(raw, dict):
        r.keys(raw, f"{where}.dwell_s", stops, required=stops)
        return tuple(r.number(raw[s], f"{where}.dwell_s.{s}") for s in stops)
    value = r.number(raw, f"{where}.dwell_s")
    return tuple(value for _ in stops)


def _types(r: _Reader, raw: object, bus_lines: tuple[BusLine, ...]) -> tuple[VehicleType, ...]:
    table = r.table(raw, "[types]")
    r.keys(table, "[types]", _DEFAULT_TYPES)
    merged: dict[str, VehicleType] = dict(_DEFAULT_TYPES)
    for type_id, over_raw in table.items():
        where = f"[types.{type_id}]"
        over = r.table(over_raw, where)
        r.keys(over, where, _TYPE_KEYS)
        base = merged[type_id]
        emission = over.get("emission_class", base.emission_class)
        emission = r.string(emission, f"{where}.emission_class")
        if not (emission == "zero" or emission.startswith(_EMISSION_PREFIXES)):
            raise r.fail(f"{where}.emission_class {emission!r} is not a SUMO emission class")
        color = over.get("color", base.color)
        if not isinstance(color, str):
            raise r.fail(f"{where}.color must be a string")

        def opt(key: str, current: float | None, w: str = where,
                o: dict[str, Any] = over) -> float | None:
            return current if key not in o else r.number(o[key], f"{w}.{key}")

        merged[type_id] = VehicleType(
            id=type_id, vclass=base.vclass, mode=base.mode, emission_class=emission,
            occupancy=r.number(over.get("occupancy", base.occupancy), f"{where}.occupancy"),
            length_m=opt("length_m", base.length_m),
            max_speed_mps=opt("max_speed_mps", base.max_speed_mps),
            sigma=opt("sigma", base.sigma), color=color,
        )
    bus = merged["bus"]
    per_line = [
        VehicleType(id=b.vtype_id, vclass=bus.vclass, mode="bus",
                    emission_class=bus.emission_class, occupancy=b.occupancy,
                    length_m=bus.length_m, max_speed_mps=bus.max_speed_mps, sigma=bus.sigma,
                    color=bus.color)
        for b in bus_lines
    ]
    # The template "bus" type is not written: every bus runs with its line's type.
    return tuple(t for t in merged.values() if t.id != "bus") + tuple(per_line)


# --------------------------------------------------------------------------- rates


def _boundaries(s: Scenario) -> list[float]:
    cuts = {s.begin_s, s.end_s}
    for p in s.periods:
        cuts.update((p.begin_s, p.end_s))
    for u in s.surges:
        cuts.update((u.begin_s, u.end_s))
    return sorted(cuts)


def _slice_rates(s: Scenario, mode: str) -> list[tuple[float, float, dict[OD, float]]]:
    """Piecewise-constant flows per hour of ``mode`` ("vehicles", "bicycles",
    "pedestrians"): ``(begin, end, {od: rate})`` for each elementary time slice."""
    base = {f.od: f.per_hour for f in getattr(s, mode)}
    out: list[tuple[float, float, dict[OD, float]]] = []
    edges = _boundaries(s)
    for b, e in itertools.pairwise(edges):
        period = next(p for p in s.periods if p.begin_s <= b < p.end_s)
        rates = {od: q * period.factor for od, q in base.items()}
        rates.update({f.od: f.per_hour for f in getattr(period, mode)})
        for u in s.surges:
            if u.begin_s <= b < u.end_s:
                for f in getattr(u, mode):
                    rates[f.od] = rates.get(f.od, 0.0) + f.per_hour
        out.append((b, e, rates))
    return out


def movement_flows(scenario: Scenario, begin_s: float | None = None,
                   end_s: float | None = None) -> dict[tuple[str, str, str], float]:
    """Mean flow per hour by ``(from_arm, to_arm, mode)`` over ``[begin_s, end_s)``.

    The default window is the measured period (after the warm-up).  This is
    what a competent engineer knows about the period from counts and the
    timetable (Verkehrsstärken je Strom): the declared demand including
    planned surges, not one seed's random draw.  Buses are counted from the
    timetable; a lane closure does not change demand and is not reflected.
    Vans count as ``car``.  Pairs with zero flow are left out.
    """
    lo = scenario.measure_begin_s if begin_s is None else begin_s
    hi = scenario.end_s if end_s is None else end_s
    if hi <= lo:
        raise ValueError(f"empty window [{lo}, {hi})")
    hours = (hi - lo) / 3600.0
    out: dict[tuple[str, str, str], float] = {}

    def add(key: tuple[str, str, str], veh: float) -> None:
        if veh > 0:
            out[key] = out.get(key, 0.0) + veh / hours

    for group, modes in (("vehicles", None), ("bicycles", "bicycle"),
                         ("pedestrians", "pedestrian")):
        for b, e, rates in _slice_rates(scenario, group):
            overlap = max(0.0, min(e, hi) - max(b, lo)) / 3600.0
            if overlap <= 0:
                continue
            for (o, d), q in rates.items():
                if modes is None:
                    add((o, d, "truck"), q * overlap * scenario.truck_share)
                    add((o, d, "car"), q * overlap * (1.0 - scenario.truck_share))
                else:
                    add((o, d, modes), q * overlap)
    for line in scenario.bus_lines:
        n = sum(1 for t in line.departures_s if lo <= t < hi)
        add((line.origin, line.destination, "bus"), float(n))
    return dict(sorted(out.items()))


def person_occupancy(scenario: Scenario) -> dict[str, float]:
    """Persons per vehicle by SUMO vType id, for occupancy-weighted person delay."""
    return {t.id: t.occupancy for t in scenario.types}


def vtype_modes(scenario: Scenario) -> dict[str, str]:
    """Mode (one of ``MODES``) of every vType id the generated files use."""
    return {t.id: t.mode for t in scenario.types}


# --------------------------------------------------------------------------- writing


def _rng(seed: int, stream: str) -> np.random.Generator:
    # One generator per stream keyed by a stable hash, so adding a flow to a
    # scenario does not reshuffle every other flow of the same seed.
    return np.random.default_rng([seed, zlib.crc32(stream.encode())])


def _poisson_times(rng: np.random.Generator, begin: float, end: float,
                   per_hour: float) -> list[float]:
    if per_hour <= 0:
        return []
    n = int(rng.poisson(per_hour * (end - begin) / 3600.0))
    return sorted(float(x) for x in rng.uniform(begin, end, n))


def _attr(**kv: object) -> str:
    return " ".join(f"{k}={quoteattr(str(v))}" for k, v in kv.items() if v is not None)


def _t(x: float) -> str:
    return f"{x:.2f}"


def _net_info(net_file: Path) -> tuple[set[str], dict[str, float]]:
    """Edge ids and lane lengths of a SUMO network (lane id -> length)."""
    edges: set[str] = set()
    lanes: dict[str, float] = {}
    try:
        for _event, el in ET.iterparse(net_file):
            if el.tag == "lane":
                lanes[el.get("id", "")] = float(el.get("length", "0"))
            elif el.tag == "edge" and el.get("function") is None:
                edges.add(el.get("id", ""))
                el.clear()
    except (ET.ParseError, OSError) as exc:
        raise ConfigError(f"cannot read network: {exc}", net_file) from exc
    return edges, lanes


def write_demand(scenario: Scenario, seed: int, out_dir: Path, *,
                 net_file: Path | None = None) -> DemandFiles:
    """Write SUMO route and event files for one seed into ``out_dir``.

    ``net_file`` (default: ``scenarios/<junction>/<junction>.net.xml`` next to
    the scenario, when it exists) is used to check that the edges and closed
    lanes exist and to keep pedestrian start and end points on their sidewalks.
    The same scenario and seed always give byte-identical files.
    """
    if net_file is None:
        candidate = scenario.path.parent / scenario.junction / f"{scenario.junction}.net.xml"
        net_file = candidate if candidate.is_file() else None
    edge_len: dict[str, float] = {}
    if net_file is not None:
        edges, lanes = _net_info(net_file)
        needed = {f"{a}_{s}" for a in ARMS for s in ("in", "out")}
        missing = sorted(needed - edges)
        if missing:
            raise ConfigError(f"network lacks the contract edges {', '.join(missing)}", net_file)
        for c in scenario.closures:
            if c.lane_id not in lanes:
                raise ConfigError(
                    f"lane closure names lane {c.lane_id}, which {net_file} does not have",
                    scenario.path,
                )
        for edge in needed:
            edge_len[edge] = max(
                (n for lid, n in lanes.items() if lid.rsplit("_", 1)[0] == edge), default=0.0
            )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items: list[tuple[float, int, str, str]] = []
    vehicle_types = ("car", "van", "truck")
    mix = np.array([1.0 - scenario.truck_share - scenario.van_share,
                    scenario.van_share, scenario.truck_share])
    mix = mix / mix.sum()

    for b, e, rates in _slice_rates(scenario, "vehicles"):
        for (o, d), q in sorted(rates.items()):
            rng = _rng(seed, f"veh.{o}{d}.{b:g}")
            for t in _poisson_times(rng, b, e, q):
                vt = vehicle_types[int(rng.choice(3, p=mix))]
                items.append((round(t, 2), 0, f"{o}{d}", _trip(vt, t, o, d)))
    for b, e, rates in _slice_rates(scenario, "bicycles"):
        for (o, d), q in sorted(rates.items()):
            rng = _rng(seed, f"bike.{o}{d}.{b:g}")
            for t in _poisson_times(rng, b, e, q):
                items.append((round(t, 2), 1, f"{o}{d}", _trip("bicycle", t, o, d)))
    for b, e, rates in _slice_rates(scenario, "pedestrians"):
        for (o, d), q in sorted(rates.items()):
            rng = _rng(seed, f"ped.{o}{d}.{b:g}")
            for t in _poisson_times(rng, b, e, q):
                # Pedestrians join and leave the sidewalk 10-60 m from the
                # junction (houses, shops, stops), so they meet the crossing
                # spread out rather than in a platoon from the model border.
                dep = float(rng.uniform(10.0, 60.0))
                arr = float(rng.uniform(10.0, 60.0))
                if edge_len:
                    dep = min(dep, edge_len[f"{o}_in"] - 1.0)
                    arr = min(arr, edge_len[f"{d}_out"] - 1.0)
                person = _attr(type="pedestrian", depart=_t(t), departPos=f"-{dep:.1f}")
                walk = _attr(**{"from": f"{o}_in", "to": f"{d}_out"},
                             arrivalPos=f"{arr:.1f}")
                body = f"<person {{id}} {person}><walk {walk}/></person>"
                items.append((round(t, 2), 2, f"{o}{d}", body))
    for line in scenario.bus_lines:
        rng = _rng(seed, f"bus.{line.vtype_id}")
        for sched in line.departures_s:
            t = sched + (float(rng.uniform(0.0, line.jitter_s)) if line.jitter_s > 0 else 0.0)
            if t >= scenario.end_s:
                continue
            stops = "".join(
                f"<stop {_attr(busStop=s, duration=f'{w:g}')}/>"
                for s, w in zip(line.stops, line.dwell_s, strict=True)
            )
            body = _trip(line.vtype_id, t, line.origin, line.destination, line=line.line,
                         inner=stops)
            items.append((round(t, 2), 3, f"{line.line}.{line.origin}{line.destination}", body))

    # Sorted by departure, as SUMO reads route files in one pass.
    items.sort(key=lambda it: (it[0], it[1], it[2]))
    counters: dict[tuple[int, str], int] = {}
    prefixes = {0: "veh", 1: "bike", 2: "ped", 3: "bus"}
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f"<!-- generated by atsc sim.demand from scenario {scenario.name}, seed {seed};"
        " do not edit -->",
        "<routes>",
    ]
    lines += [f"    {_vtype_xml(vt)}" for vt in scenario.types]
    for _t_key, kind, key, body in items:
        k = counters.get((kind, key), 0)
        counters[(kind, key)] = k + 1
        lines.append("    " + body.replace("{id}", _attr(id=f"{prefixes[kind]}.{key}.{k}"), 1))
    lines.append("</routes>")
    route = out_dir / f"{scenario.name}.rou.xml"
    route.write_text("\n".join(lines) + "\n", encoding="utf-8")

    additional: list[Path] = []
    if scenario.closures:
        add = out_dir / f"{scenario.name}.events.add.xml"
        add.write_text(_closures_xml(scenario, _upstream_edges(net_file)), encoding="utf-8")
        additional.append(add)
    return DemandFiles(route_files=(route,), additional_files=tuple(additional))


def _trip(vtype: str, t: float, o: str, d: str, *, line: str | None = None,
          inner: str = "") -> str:
    attrs = _attr(type=vtype, depart=_t(t), **{"from": f"{o}_in", "to": f"{d}_out"},
                  departLane="best", departSpeed="max", line=line)
    if inner:
        return f"<trip {{id}} {attrs}>{inner}</trip>"
    return f"<trip {{id}} {attrs}/>"


def _vtype_xml(vt: VehicleType) -> str:
    attrs = _attr(id=vt.id, vClass=vt.vclass, emissionClass=vt.emission_class,
                  length=None if vt.length_m is None else f"{vt.length_m:g}",
                  maxSpeed=None if vt.max_speed_mps is None else f"{vt.max_speed_mps:g}",
                  sigma=None if vt.sigma is None else f"{vt.sigma:g}",
                  color=vt.color or None)
    if vt.mode == "pedestrian":
        return f"<vType {attrs}/>"
    # The emissions device on every vehicle so tripinfo carries CO2/NOx totals
    # without each runner having to remember the option.
    # jmCrossingGap: a turning driver waits while a pedestrian is within 25 m of the
    # crossing's conflict point (SUMO's default 10 m lets right-turners that already wait
    # inside the junction edge into pedestrians who stepped onto the crossing on green).
    if vt.mode in ("car", "truck", "bus"):
        attrs += ' jmCrossingGap="25"'
    return (f'<vType {attrs}><param key="has.emissions.device" value="true"/>'
            f'<param key="atsc.occupancy" value="{vt.occupancy:g}"/></vType>')


def _upstream_edges(net_file: Path | None) -> dict[str, list[str]]:
    """Edge -> the edges leading into it (drivers learn of a closure one edge ahead)."""
    if net_file is None:
        return {}
    import sumolib

    net = sumolib.net.readNet(str(net_file))
    return {
        e.getID(): sorted(i.getID() for i in e.getIncoming() if not i.getID().startswith(":"))
        for e in net.getEdges()
    }


def _closures_xml(s: Scenario, upstream: Mapping[str, list[str]] | None = None) -> str:
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f"<!-- generated by atsc sim.demand from scenario {s.name}; do not edit -->",
        "<additional>",
    ]
    for k, c in enumerate(s.closures):
        informed = [c.edge, *(upstream or {}).get(c.edge, [])]
        # closingLaneReroute takes the lane away from every vehicle class for the
        # interval; vehicles on the edge change to the remaining lanes.
        out += [
            # Drivers learn of the closure one edge ahead (as from a sign upstream), so
            # nobody queued in front of the lane split is still heading for it.
            f"    <rerouter {_attr(id=f'closure_{k}', edges=' '.join(informed))}>",
            f"        <interval {_attr(begin=_t(c.begin_s), end=_t(c.end_s))}>",
            f"            <closingLaneReroute {_attr(id=c.lane_id, disallow='all')}/>",
            "        </interval>",
            "    </rerouter>",
        ]
    out.append("</additional>")
    return "\n".join(out) + "\n"
