"""Traffic KPIs of one ground-truth run, read from SUMO's own output files.

The runner starts each ground-truth SUMO run with :func:`kpi_sumo_args` and
:func:`tls_states_additional`, records ``queues.csv`` itself, and then calls
:func:`compute_kpis` on the run folder.  Definitions are in docs/kpis.md; the
short version:

- delays are SUMO's ``timeLoss`` (the RESCO "average delay"), of completed trips
  that depart inside the measured window ``[warmup_s, end_s)``;
- the measured window excludes the warm-up (Einschwingzeit) so that every
  controller is judged on a loaded network, not on an empty one;
- where a mode has no completed trip its delay is ``None`` (never NaN, never 0:
  "no buses" must not read as "buses without delay").

Files in a run folder (all written by SUMO except ``queues.csv``):

=================  ======================================================
``tripinfo.xml``   ``<tripinfo>`` per vehicle (unfinished ones included,
                   ``arrival="-1"``) and ``<personinfo>`` per person
``statistics.xml`` teleports, collisions, emergency stops, insertion backlog
``collisions.xml`` one ``<collision>`` per collision (cross-check)
``tls_states.xml`` ``<tlsState>`` per second of the controlled traffic light
``queues.csv``     ``time_s,approach,queue_m,halting_veh`` (the runner)
=================  ======================================================

Parsing streams with ``iterparse`` and clears elements as it goes: tripinfo
files of a peak hour reach tens of MB.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from controller.errors import ConfigError

TRIPINFO_FILE = "tripinfo.xml"
STATISTICS_FILE = "statistics.xml"
COLLISIONS_FILE = "collisions.xml"
TLS_STATES_FILE = "tls_states.xml"
TLS_STATES_ADDITIONAL = "tls_states.add.xml"
QUEUES_FILE = "queues.csv"
QUEUES_HEADER = ("time_s", "approach", "queue_m", "halting_veh")

#: Modes reported separately.  ``other`` (trams, rail, ...) counts only in the
#: all-vehicle delay.
MODES = ("car", "truck", "bus", "bicycle")

#: SUMO vClass -> reporting mode.  Vans (``delivery``) and two-wheelers with an
#: engine drive with cars and are timed like cars, so they count as cars;
#: e-scooters use the cycle infrastructure, so they count as bicycles.
_VCLASS_MODE: Mapping[str, str] = {
    **dict.fromkeys(
        (
            "passenger", "private", "taxi", "hov", "evehicle", "emergency", "authority",
            "army", "vip", "delivery", "motorcycle", "moped", "custom1", "custom2",
        ),
        "car",
    ),
    "truck": "truck",
    "trailer": "truck",
    "bus": "bus",
    "coach": "bus",
    "bicycle": "bicycle",
    "scooter": "bicycle",
}

#: vType ids SUMO defines itself (used when a route file gives no vType).
_SUMO_DEFAULT_VTYPES: Mapping[str, str] = {
    "DEFAULT_VEHTYPE": "passenger",
    "DEFAULT_BIKETYPE": "bicycle",
    "DEFAULT_TAXITYPE": "taxi",
    "DEFAULT_RAILTYPE": "rail",
    "DEFAULT_CONTAINERTYPE": "ignoring",
}

_KNOWN_VCLASSES = frozenset(_VCLASS_MODE) | {
    "rail", "rail_urban", "rail_electric", "rail_fast", "tram", "ship", "cable_car",
    "subway", "aircraft", "wheelchair", "drone", "container", "ignoring", "pedestrian",
}

_MG_PER_KG = 1e6
_MG_PER_G = 1e3
_ML_PER_L = 1e3
_S_PER_H = 3600.0


# --------------------------------------------------------------------------- SUMO options


def kpi_sumo_args(run_dir: Path) -> list[str]:
    """SUMO options a ground-truth run needs so that :func:`compute_kpis` works.

    Persons need no option of their own: without ``--personinfo-output`` SUMO
    1.28 writes ``<personinfo>`` into the tripinfo file.  Fuel is requested in
    volume (``--emissions.volumetric-fuel``) so that SUMO, which knows each
    emission class's fuel (petrol, diesel), does the mass-to-litre conversion.
    Collisions are only reported (``warn``) so that a collision does not
    change the traffic it is judged on; the safety test reads the count.
    """
    run_dir = Path(run_dir)
    return [
        "--tripinfo-output", str(run_dir / TRIPINFO_FILE),
        "--tripinfo-output.write-unfinished", "true",
        "--device.emissions.probability", "1",
        "--emissions.volumetric-fuel", "true",
        "--statistic-output", str(run_dir / STATISTICS_FILE),
        "--collision-output", str(run_dir / COLLISIONS_FILE),
        "--collision.check-junctions", "true",
        "--collision.action", "warn",
    ]


def tls_states_additional(run_dir: Path, tls_id: str) -> Path:
    """Write an additional file that makes SUMO log the traffic light's states.

    Pass the returned path to SUMO with ``-a`` (``--additional-files``); the run
    then writes ``run_dir/tls_states.xml`` with one ``<tlsState>`` per second.
    The destination is absolute because SUMO resolves relative paths in an
    additional file against that file's folder, which callers may move.
    """
    if not tls_id or any(c in tls_id for c in "<>&\""):
        raise ConfigError(f"invalid traffic light id {tls_id!r}", run_dir)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    root = ET.Element("additional")
    ET.SubElement(
        root,
        "timedEvent",
        {
            "type": "SaveTLSStates",
            "source": tls_id,
            "dest": str(run_dir.resolve() / TLS_STATES_FILE),
        },
    )
    path = run_dir / TLS_STATES_ADDITIONAL
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path


# --------------------------------------------------------------------------- the record


@dataclass(frozen=True)
class RunKpis:
    """KPIs of one run (scenario, controller, seed); definitions in docs/kpis.md.

    Delays are seconds per trip; ``None`` means "no completed trip of that kind
    in the measured window".  Counts are 0 when nothing happened.
    """

    scenario: str
    controller: str
    seed: int
    vehicle_delay_s: float | None
    car_delay_s: float | None
    truck_delay_s: float | None
    bus_delay_s: float | None
    bicycle_delay_s: float | None
    pedestrian_delay_s: float | None
    person_delay_s: float | None
    stops_per_vehicle: float | None
    insertion_delay_s: float | None
    #: ``vehicle_delay_s + insertion_delay_s``, derived (not an argument): the
    #: wait outside the network that ``timeLoss`` does not see.
    total_vehicle_delay_s: float | None = field(init=False)
    queue_mean_m: dict[str, float]
    queue_p95_m: dict[str, float]
    queue_max_m: float | None
    throughput_veh_h: float
    vehicles_completed: int
    persons_completed: int
    trips_incomplete: int
    insertion_backlog: int
    teleports: int
    person_teleports: int
    collisions: int
    emergency_stops: int
    emergency_braking: int
    co2_kg: float
    nox_g: float
    fuel_l: float
    warmup_s: float
    end_s: float
    run_dir: str
    wall_time_s: float = 0.0
    #: Per-mode trip counts behind the delays (so a mean of 2 trips is visible).
    trips_by_mode: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "total_vehicle_delay_s",
            total_delay(self.vehicle_delay_s, self.insertion_delay_s),
        )


def total_delay(vehicle_delay_s: float | None, insertion_delay_s: float | None) -> float | None:
    """Vehicle delay plus insertion delay; no insertion delay counts as 0, no delay is None."""
    if vehicle_delay_s is None:
        return None
    return vehicle_delay_s + (insertion_delay_s or 0.0)


# --------------------------------------------------------------------------- streaming XML


def _iter_top_level(path: Path, tags: Iterable[str]) -> Iterator[ET.Element]:
    """Yield complete children of the root with one of ``tags``, then free them."""
    wanted = frozenset(tags)
    depth = 0
    root: ET.Element | None = None
    try:
        for event, elem in ET.iterparse(path, events=("start", "end")):
            if event == "start":
                if root is None:
                    root = elem
                depth += 1
                continue
            depth -= 1
            if depth == 1:
                if elem.tag in wanted:
                    yield elem
                # Clearing the root drops the finished child; clearing only the
                # child would leave an empty element per trip in memory.
                assert root is not None
                root.clear()
    except ET.ParseError as exc:
        raise ConfigError(f"malformed XML ({exc})", path) from exc
    except FileNotFoundError as exc:
        raise ConfigError("file missing (did the run use kpi_sumo_args?)", path) from exc


def _num(elem: ET.Element, name: str, path: Path, default: float | None = None) -> float:
    raw = elem.get(name)
    if raw is None or raw == "":
        if default is not None:
            return default
        raise ConfigError(f"<{elem.tag} id={elem.get('id')!r}> has no {name!r}", path)
    where = f"<{elem.tag} id={elem.get('id')!r}> {name}={raw!r}"
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{where} is no number", path) from exc
    if not math.isfinite(value):
        raise ConfigError(f"{where} is not finite", path)
    return value


def vtype_classes_from_xml(paths: Iterable[Path]) -> dict[str, str]:
    """vType id -> vClass from SUMO route or additional files.

    A vType without ``vClass`` is ``passenger`` (SUMO's default).  The runner
    passes the result to :func:`compute_kpis` as ``vtype_classes``.
    """
    classes: dict[str, str] = {}
    for path in paths:
        try:
            for _event, elem in ET.iterparse(path, events=("end",)):
                if elem.tag == "vType" and elem.get("id"):
                    classes[str(elem.get("id"))] = elem.get("vClass", "passenger")
        except ET.ParseError as exc:
            raise ConfigError(f"malformed XML ({exc})", path) from exc
        except FileNotFoundError as exc:
            raise ConfigError("file missing", path) from exc
    return classes


def _vclass_resolver(
    vtype_classes: Mapping[str, str] | None, path: Path, strict: bool = True
) -> Mapping[str, str]:
    """Return a dict-like vType -> vClass; unknown vTypes fail loudly when strict."""

    class _Classes(dict[str, str]):
        def __missing__(self, vtype: str) -> str:
            vclass = (vtype_classes or {}).get(vtype) or _SUMO_DEFAULT_VTYPES.get(vtype)
            if vclass is None and vtype in _KNOWN_VCLASSES:
                vclass = vtype
            if vclass is None and not strict:
                vclass = "unknown"
            if vclass is None:
                # Guessing a mode from an id would silently move buses into cars.
                raise ConfigError(
                    f"vType {vtype!r} has no known vClass; pass vtype_classes "
                    "(see sim.kpis.vtype_classes_from_xml)",
                    path,
                )
            self[vtype] = vclass
            return vclass

    return _Classes()


# --------------------------------------------------------------------------- trips


@dataclass
class _Trip:
    mode: str
    vtype: str
    vclass: str
    depart: float
    arrival: float | None
    time_loss: float
    depart_delay: float
    waiting_count: float
    co2_mg: float
    nox_mg: float
    fuel_ml: float


@dataclass
class _Person:
    depart: float
    completed: bool
    walks: int
    walk_time_loss: float


def _read_tripinfo(
    path: Path, vtype_classes: Mapping[str, str] | None, strict: bool = True
) -> tuple[list[_Trip], list[_Person]]:
    classes = _vclass_resolver(vtype_classes, path, strict)
    trips: list[_Trip] = []
    persons: list[_Person] = []
    for elem in _iter_top_level(path, ("tripinfo", "personinfo")):
        if elem.tag == "tripinfo":
            vtype = elem.get("vType", "DEFAULT_VEHTYPE")
            arrival = _num(elem, "arrival", path)
            em = elem.find("emissions")
            vclass = classes[vtype]
            trips.append(
                _Trip(
                    mode=_VCLASS_MODE.get(vclass, "other"),
                    vtype=vtype,
                    vclass=vclass,
                    depart=_num(elem, "depart", path),
                    arrival=arrival if arrival >= 0 else None,
                    time_loss=_num(elem, "timeLoss", path),
                    depart_delay=_num(elem, "departDelay", path, 0.0),
                    waiting_count=_num(elem, "waitingCount", path, 0.0),
                    co2_mg=0.0 if em is None else _num(em, "CO2_abs", path, 0.0),
                    nox_mg=0.0 if em is None else _num(em, "NOx_abs", path, 0.0),
                    fuel_ml=0.0 if em is None else _num(em, "fuel_abs", path, 0.0),
                )
            )
        else:
            walks = elem.findall("walk")
            stages = list(elem)
            # Unfinished persons carry duration="-1" and arrival="-1" on the
            # stage they were in; either marks the trip as incomplete.
            completed = _num(elem, "duration", path, -1.0) >= 0 and all(
                _num(s, "arrival", path, 0.0) >= 0 for s in stages if s.get("arrival") is not None
            )
            persons.append(
                _Person(
                    depart=_num(elem, "depart", path),
                    completed=completed,
                    walks=len(walks),
                    walk_time_loss=sum(_num(w, "timeLoss", path, 0.0) for w in walks),
                )
            )
    return trips, persons


def read_time_losses(
    run_dir: Path,
    *,
    warmup_s: float,
    end_s: float,
    vtype_classes: Mapping[str, str] | None = None,
    strict: bool = True,
) -> dict[str, list[float]]:
    """timeLoss of every completed trip in the measured window, by mode.

    Keys: the modes in :data:`MODES`, ``other``, ``vehicle`` (all vehicles) and
    ``pedestrian`` (walk stages of persons).  Used for delay distributions.
    With ``strict=False`` vTypes of unknown vClass count as ``other`` instead
    of raising (enough for the all-vehicle and pedestrian lists).
    """
    trips, persons = _read_tripinfo(Path(run_dir) / TRIPINFO_FILE, vtype_classes, strict)
    out: dict[str, list[float]] = {m: [] for m in (*MODES, "other", "vehicle", "pedestrian")}
    for t in trips:
        if t.arrival is not None and warmup_s <= t.depart < end_s:
            out[t.mode].append(t.time_loss)
            out["vehicle"].append(t.time_loss)
    for p in persons:
        if p.completed and p.walks and warmup_s <= p.depart < end_s:
            out["pedestrian"].append(p.walk_time_loss)
    return out


# --------------------------------------------------------------------------- other files


def _read_statistics(path: Path) -> dict[str, int]:
    wanted = {
        "teleports": ("teleports", "total"),
        "person_teleports": ("personTeleports", "total"),
        "collisions": ("safety", "collisions"),
        "emergency_stops": ("safety", "emergencyStops"),
        "emergency_braking": ("safety", "emergencyBraking"),
        "insertion_backlog": ("vehicles", "waiting"),
    }
    by_tag: dict[str, ET.Element] = {}
    for elem in _iter_top_level(path, {tag for tag, _ in wanted.values()}):
        by_tag[elem.tag] = ET.Element(elem.tag, dict(elem.attrib))
    out: dict[str, int] = {}
    for key, (tag, attr) in wanted.items():
        found = by_tag.get(tag)
        if found is None:
            # emergencyBraking is recent in SUMO; everything else must be there.
            if attr == "emergencyBraking":
                out[key] = 0
                continue
            raise ConfigError(f"no <{tag}> element (not a SUMO statistic-output file?)", path)
        out[key] = round(_num(found, attr, path))
    return out


def _count_collisions(path: Path) -> int | None:
    if not path.exists():
        return None
    return sum(1 for _ in _iter_top_level(path, ("collision",)))


def read_queues(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Parse ``queues.csv``: approach -> (times_s, queue_m), sorted by time."""
    rows: dict[str, list[tuple[float, float]]] = defaultdict(list)
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or tuple(h.strip() for h in header) != QUEUES_HEADER:
                raise ConfigError(f"header must be {','.join(QUEUES_HEADER)}, got {header}", path)
            for lineno, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) != len(QUEUES_HEADER):
                    raise ConfigError(f"line {lineno}: expected 4 fields, got {len(row)}", path)
                try:
                    t, queue = float(row[0]), float(row[2])
                    float(row[3])
                except ValueError as exc:
                    raise ConfigError(f"line {lineno}: {exc}", path) from exc
                if not (math.isfinite(t) and math.isfinite(queue)) or queue < 0:
                    raise ConfigError(f"line {lineno}: invalid time or queue {row}", path)
                rows[row[1]].append((t, queue))
    except FileNotFoundError as exc:
        raise ConfigError("file missing", path) from exc
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for approach, samples in sorted(rows.items()):
        arr = np.array(sorted(samples), dtype=float)
        out[approach] = (arr[:, 0], arr[:, 1])
    return out


def read_tls_states(path: Path) -> tuple[np.ndarray, list[str]]:
    """Parse SaveTLSStates output: (times_s, state strings), one per entry.

    SUMO writes an entry every step here; entries hold until the next one, so
    readers must not assume a fixed step.
    """
    times: list[float] = []
    states: list[str] = []
    for elem in _iter_top_level(path, ("tlsState",)):
        times.append(_num(elem, "time", path))
        states.append(elem.get("state", ""))
    return np.array(times, dtype=float), states


# --------------------------------------------------------------------------- KPIs


def _mean(values: Sequence[float]) -> float | None:
    return float(statistics.fmean(values)) if values else None


def compute_kpis(
    run_dir: Path,
    *,
    scenario: str,
    controller: str,
    seed: int,
    warmup_s: float,
    end_s: float,
    occupancy: Mapping[str, float],
    wall_time_s: float = 0.0,
    vtype_classes: Mapping[str, str] | None = None,
) -> RunKpis:
    """Compute the KPIs of one finished run from the files in ``run_dir``.

    ``occupancy`` maps a vType id (or, failing that, its vClass) to persons per
    vehicle for the person delay; vehicles of unlisted types carry 1 person.
    ``vtype_classes`` maps vType ids to SUMO vClasses; SUMO's default types and
    vTypes named after a vClass ("bus") need no entry.  Missing ``queues.csv``
    gives empty queue KPIs (queue recording is the runner's job, see
    docs/kpis.md); every other missing or malformed file raises ConfigError.
    """
    run_dir = Path(run_dir)
    if not (math.isfinite(warmup_s) and math.isfinite(end_s)) or not 0 <= warmup_s < end_s:
        raise ConfigError(
            f"measured window must satisfy 0 <= warmup_s < end_s, got [{warmup_s}, {end_s}]",
            run_dir,
        )
    for key, occ in occupancy.items():
        if not (math.isfinite(occ) and occ >= 0):
            raise ConfigError(f"occupancy of {key!r} must be a number >= 0, got {occ}", run_dir)
    if vtype_classes is not None:
        vtype_classes = dict(vtype_classes)

    trip_path = run_dir / TRIPINFO_FILE
    trips, persons = _read_tripinfo(trip_path, vtype_classes)

    def in_window(depart: float) -> bool:
        return warmup_s <= depart < end_s

    done = [t for t in trips if t.arrival is not None and in_window(t.depart)]
    by_mode: dict[str, list[float]] = {m: [] for m in MODES}
    for t in done:
        if t.mode in by_mode:
            by_mode[t.mode].append(t.time_loss)

    walkers = [p for p in persons if p.completed and p.walks and in_window(p.depart)]
    ped_losses = [p.walk_time_loss for p in walkers]

    weighted = 0.0
    persons_weight = 0.0
    for t in done:
        occ = occupancy.get(t.vtype, occupancy.get(t.vclass, 1.0))
        weighted += occ * t.time_loss
        persons_weight += occ
    weighted += sum(ped_losses)
    persons_weight += len(ped_losses)

    emitting = [t for t in trips if in_window(t.depart)]
    arrived_in_window = sum(
        1 for t in trips if t.arrival is not None and warmup_s <= t.arrival <= end_s
    )
    stats = _read_statistics(run_dir / STATISTICS_FILE)
    collisions = stats["collisions"]
    listed = _count_collisions(run_dir / COLLISIONS_FILE)
    if listed is not None:
        # Either file alone can miss a kind of collision; report the larger.
        collisions = max(collisions, listed)

    queue_mean: dict[str, float] = {}
    queue_p95: dict[str, float] = {}
    queue_max: float | None = None
    queue_path = run_dir / QUEUES_FILE
    if queue_path.exists():
        for approach, (times, queue) in read_queues(queue_path).items():
            sel = queue[(times >= warmup_s) & (times <= end_s)]
            if sel.size == 0:
                continue
            queue_mean[approach] = float(sel.mean())
            queue_p95[approach] = float(np.percentile(sel, 95))
            top = float(sel.max())
            queue_max = top if queue_max is None else max(queue_max, top)

    return RunKpis(
        scenario=scenario,
        controller=controller,
        seed=int(seed),
        vehicle_delay_s=_mean([t.time_loss for t in done]),
        car_delay_s=_mean(by_mode["car"]),
        truck_delay_s=_mean(by_mode["truck"]),
        bus_delay_s=_mean(by_mode["bus"]),
        bicycle_delay_s=_mean(by_mode["bicycle"]),
        pedestrian_delay_s=_mean(ped_losses),
        person_delay_s=weighted / persons_weight if persons_weight > 0 else None,
        stops_per_vehicle=_mean([t.waiting_count for t in done]),
        insertion_delay_s=_mean([t.depart_delay for t in done]),
        queue_mean_m=queue_mean,
        queue_p95_m=queue_p95,
        queue_max_m=queue_max,
        throughput_veh_h=arrived_in_window * _S_PER_H / (end_s - warmup_s),
        vehicles_completed=len(done),
        persons_completed=sum(1 for p in persons if p.completed and in_window(p.depart)),
        trips_incomplete=sum(1 for t in trips if t.arrival is None)
        + sum(1 for p in persons if not p.completed and p.depart >= 0),
        insertion_backlog=stats["insertion_backlog"],
        teleports=stats["teleports"],
        person_teleports=stats["person_teleports"],
        collisions=collisions,
        emergency_stops=stats["emergency_stops"],
        emergency_braking=stats["emergency_braking"],
        co2_kg=sum(t.co2_mg for t in emitting) / _MG_PER_KG,
        nox_g=sum(t.nox_mg for t in emitting) / _MG_PER_G,
        fuel_l=sum(t.fuel_ml for t in emitting) / _ML_PER_L,
        warmup_s=float(warmup_s),
        end_s=float(end_s),
        run_dir=str(run_dir),
        wall_time_s=float(wall_time_s),
        trips_by_mode={
            **{m: len(v) for m, v in by_mode.items()},
            "pedestrian": len(ped_losses),
        },
    )


# --------------------------------------------------------------------------- JSON


def write_kpis_json(records: Sequence[RunKpis], path: Path) -> None:
    """Write records as a JSON list of flat objects (keys = RunKpis field names)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps([asdict(r) for r in records], indent=1, allow_nan=False) + "\n",
        encoding="utf-8",
    )


def read_kpis_json(path: Path) -> list[RunKpis]:
    """Read what :func:`write_kpis_json` wrote; unknown or missing keys are errors.

    ``total_vehicle_delay_s`` is recomputed from its parts: files written before it
    existed still load, and a stored value that disagrees is an error.
    """
    path = Path(path)
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError("file missing", path) from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"invalid JSON ({exc})", path) from exc
    if not isinstance(data, list):
        raise ConfigError("expected a JSON list of KPI records", path)
    names = {f.name for f in fields(RunKpis)}
    derived = {f.name for f in fields(RunKpis) if not f.init}
    required = {
        f.name for f in fields(RunKpis) if f.name not in ("wall_time_s", "trips_by_mode")
    } - derived
    out: list[RunKpis] = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise ConfigError(f"record {i} is not an object", path)
        unknown = set(item) - names
        missing = required - set(item)
        if unknown or missing:
            raise ConfigError(
                f"record {i}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}", path
            )
        stored = {k: item.pop(k) for k in derived & set(item)}
        try:
            rec = RunKpis(**item)
        except TypeError as exc:
            raise ConfigError(f"record {i}: {exc}", path) from exc
        for name, value in stored.items():
            mine = getattr(rec, name)
            agrees = value is None if mine is None else (
                isinstance(value, int | float)
                and math.isclose(value, mine, rel_tol=1e-9, abs_tol=1e-9)
            )
            if not agrees:
                raise ConfigError(f"record {i}: {name}={value!r}, its parts give {mine!r}", path)
        out.append(rec)
    return out


# --------------------------------------------------------------------------- summary


#: Headline columns of the comparison table: (field, header, decimals, lower is better).
HEADLINE: tuple[tuple[str, str, int, bool], ...] = (
    ("vehicle_delay_s", "veh delay s", 1, True),
    ("insertion_delay_s", "insert. s", 1, True),
    ("pedestrian_delay_s", "ped delay s", 1, True),
    ("bus_delay_s", "bus delay s", 1, True),
    ("stops_per_vehicle", "stops/veh", 2, True),
    ("throughput_veh_h", "veh/h", 0, False),
    ("teleports", "teleports", 1, True),
    ("collisions", "collisions", 1, True),
    ("co2_kg", "CO2 kg", 1, True),
)

#: Controller every other one is compared with.
BASELINE = "fixed"


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation over seeds of one KPI (``n`` values)."""

    mean: float | None
    std: float | None
    n: int

    def format(self, decimals: int) -> str:
        if self.mean is None:
            return "-"
        if self.n < 2 or self.std is None:
            return f"{self.mean:.{decimals}f}"
        return f"{self.mean:.{decimals}f} ± {self.std:.{decimals}f}"


def kpi_stat(records: Sequence[RunKpis], name: str) -> Stat:
    """Mean ± sample std of a scalar KPI over records; ``None`` values are skipped."""
    values = [float(v) for r in records if (v := getattr(r, name)) is not None]
    if not values:
        return Stat(None, None, 0)
    std = statistics.stdev(values) if len(values) > 1 else None
    return Stat(statistics.fmean(values), std, len(values))


def group_records(
    records: Sequence[RunKpis],
) -> dict[str, dict[str, list[RunKpis]]]:
    """scenario -> controller -> records (seeds), in first-seen order."""
    out: dict[str, dict[str, list[RunKpis]]] = {}
    for r in records:
        out.setdefault(r.scenario, {}).setdefault(r.controller, []).append(r)
    for by_ctrl in out.values():
        for runs in by_ctrl.values():
            runs.sort(key=lambda r: r.seed)
    return out


def on_shared_seeds(
    runs: Sequence[RunKpis], baseline: Sequence[RunKpis]
) -> tuple[list[RunKpis], list[RunKpis]]:
    """Both sides cut to the seeds both ran: the same demand on each side.

    A merged table may hold one controller on seeds 1-5 and the baseline on 1-10; the
    scorecard pairs them the same way.
    """
    shared = {r.seed for r in runs} & {r.seed for r in baseline}
    return [r for r in runs if r.seed in shared], [r for r in baseline if r.seed in shared]


def delay_ratio(runs: Sequence[RunKpis], baseline: Sequence[RunKpis] | None) -> float | None:
    """Mean vehicle delay of ``runs`` over that of the baseline (< 1 = better), on shared seeds."""
    if not baseline:
        return None
    own, base = on_shared_seeds(runs, baseline)
    mine = kpi_stat(own, "vehicle_delay_s").mean
    ref = kpi_stat(base, "vehicle_delay_s").mean
    if mine is None or ref is None or ref <= 0:
        return None
    return mine / ref


def summary_table(records: Sequence[RunKpis]) -> str:
    """Plain-text comparison: one row per (scenario, controller), mean ± std over seeds."""
    header = ["scenario", "controller", "seeds", *(h for _, h, _, _ in HEADLINE), "delay/fixed"]
    rows: list[list[str]] = []
    for scenario, by_ctrl in group_records(records).items():
        baseline = by_ctrl.get(BASELINE)
        for ctrl, runs in by_ctrl.items():
            ratio = delay_ratio(runs, baseline)
            rows.append(
                [
                    scenario,
                    ctrl,
                    str(len(runs)),
                    *(kpi_stat(runs, name).format(dec) for name, _, dec, _ in HEADLINE),
                    "-" if ratio is None else f"{ratio:.2f}",
                ]
            )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = (
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        return "  ".join(padded).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in rows)
    return "\n".join(out) + "\n"
