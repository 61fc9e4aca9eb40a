"""Signal groups, stages and the junction's signal configuration.

Vocabulary (RiLSA / SUMO):

- signal group (Signalgruppe): the set of SUMO link indices of one traffic light
  that always show the same colour (``SignalGroup.links``).
- stage (Phase): a set of signal groups that are green together.
- overlap stage (Überlappungsphase): a stage that carries groups of two
  consecutive stages of the cycle, such as one arm's through and left turn
  between the through stage and the left-turn stage (a leading left turn,
  vorgezogener Linksabbieger).  Plans may insert one between its two stages.
- intergreen (Zwischenzeit) ``Z[i][j]``: the minimum time from the end of green of
  the ending group ``i`` to the start of green of the starting group ``j``.
- conflict: two groups whose road users would meet; they never show green,
  red-yellow or yellow at the same time (safety.md V1).
- conditionally compatible (bedingt verträglich): two groups that may be green
  together because one yields to the other (a right turn to pedestrians on the
  crossing it passes); the yielding group is shown as SUMO's minor green ``g``.

Everything here is pure data without I/O.  ``sim.junction`` builds these
objects from a SUMO network and a junction TOML file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

#: Hard ceiling for any cycle (safety.md V5); configuration may only lower it.
CYCLE_CEILING_S = 120


class GroupKind(StrEnum):
    """What kind of road user a signal group releases."""

    VEHICLE = "vehicle"
    BICYCLE = "bicycle"
    PEDESTRIAN = "pedestrian"
    BUS = "bus"


class SignalState(StrEnum):
    """Colour shown by a signal group in one second (one character, SUMO-like)."""

    RED = "r"
    RED_YELLOW = "u"
    GREEN = "G"
    YELLOW = "y"


@dataclass(frozen=True, slots=True)
class SignalGroup:
    """Signalgruppe: links of one traffic light that always show the same colour.

    Times are whole seconds, as signal controllers work in whole seconds.
    ``yellow_s`` and ``red_yellow_s`` are 0 for pedestrian groups (they go from
    green straight to red; the clearance is in the intergreen matrix).
    """

    id: str
    kind: GroupKind
    approach: str
    links: tuple[int, ...]
    min_green_s: int
    yellow_s: int
    red_yellow_s: int
    #: Longest time this group may wait for green (safety.md V5, no starvation).
    max_red_s: int = 110
    #: Approach speed limit, which fixes the yellow time (safety.md V3).
    speed_kmh: int = 50
    #: Movement label for people ("N through+right", "crossing W").
    label: str = ""

    @property
    def is_vehicular(self) -> bool:
        return self.kind is not GroupKind.PEDESTRIAN


@dataclass(frozen=True, slots=True)
class Stage:
    """Phase: the signal groups that are green together."""

    id: str
    groups: frozenset[str]


def _pair(a: str, b: str) -> frozenset[str]:
    return frozenset((a, b))


@dataclass(frozen=True)
class JunctionSignals:
    """The signal configuration of one junction (Knotenpunkt) as the safety rules see it.

    ``intergreen`` maps an ordered pair ``(ending, starting)`` of conflicting
    groups to the intergreen time in whole seconds.  It is input: derived from
    geometry or taken from the engineer's official matrix, never changed by the
    optimiser.
    """

    tls_id: str
    groups: tuple[SignalGroup, ...]
    conflicts: frozenset[frozenset[str]]
    intergreen: Mapping[tuple[str, str], int]
    stages: tuple[Stage, ...]
    conditional: frozenset[frozenset[str]] = frozenset()
    #: Number of SUMO link indices of the traffic light (length of its state string).
    link_count: int = 0
    max_cycle_s: int = 90
    min_cycle_s: int = 30
    #: All-red time when a program returns to the same stage (safety.md V3).
    all_red_same_stage_s: int = 1
    #: Seconds a group's green ends before its stage's green time ends (Räumzeitvorgabe):
    #: pedestrians whose crossing a right turn passes finish crossing while the turners
    #: still show their yielding green, so no turning vehicle has priority over a
    #: pedestrian still on the crossing.  Configuration, like the intergreens.
    early_end_s: Mapping[str, int] = field(default_factory=dict)
    #: Stages a plan may insert between two consecutive stages of ``stages`` whose groups
    #: it carries (see ``overlap_position``); never part of the basic cycle, which the
    #: fixed plan, actuated control and max-pressure run.
    overlap_stages: tuple[Stage, ...] = ()
    _by_id: Mapping[str, SignalGroup] = field(init=False, repr=False, compare=False)
    _stage_by_id: Mapping[str, Stage] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "intergreen", dict(self.intergreen))
        object.__setattr__(self, "early_end_s", dict(self.early_end_s))
        object.__setattr__(self, "_by_id", dict({g.id: g for g in self.groups}))
        object.__setattr__(
            self, "_stage_by_id",
            dict({s.id: s for s in (*self.stages, *self.overlap_stages)}),
        )
        problems = self.problems()
        if problems:
            raise ValueError(f"junction {self.tls_id}: " + "; ".join(problems))

    # -- lookups ---------------------------------------------------------------
    def group(self, group_id: str) -> SignalGroup:
        return self._by_id[group_id]

    def stage(self, stage_id: str) -> Stage:
        return self._stage_by_id[stage_id]

    @property
    def group_ids(self) -> tuple[str, ...]:
        return tuple(g.id for g in self.groups)

    def conflicting(self, a: str, b: str) -> bool:
        return _pair(a, b) in self.conflicts

    def conditionally_compatible(self, a: str, b: str) -> bool:
        return _pair(a, b) in self.conditional

    def early_end(self, group_id: str) -> int:
        return self.early_end_s.get(group_id, 0)

    def z(self, ending: str, starting: str) -> int:
        """Intergreen Z[ending][starting]; 0 for groups that do not conflict."""
        return self.intergreen.get((ending, starting), 0)

    def overlap_position(self, overlap_id: str, sequence: tuple[str, ...]) -> list[bool]:
        """Per position k of the cyclic ``sequence``: whether the overlap stage fits
        between stage k and stage k+1.

        It fits when it shares groups with both and holds only groups of the two, so
        inserting it only moves green starts and ends that exist anyway.
        """
        o = self.stage(overlap_id).groups
        out = []
        for k, a_id in enumerate(sequence):
            a = self.stage(a_id).groups
            b = self.stage(sequence[(k + 1) % len(sequence)]).groups
            fits = len(sequence) > 1 and bool(o & a) and bool(o & b) and o <= a | b
            out.append(fits and o not in (a, b))
        return out

    def conflicts_of(self, group_id: str) -> tuple[str, ...]:
        return tuple(g.id for g in self.groups if self.conflicting(group_id, g.id))

    # -- consistency -----------------------------------------------------------
    def problems(self) -> list[str]:
        """Inconsistencies that make the configuration unusable (empty when fine)."""
        out: list[str] = []
        ids = [g.id for g in self.groups]
        if len(set(ids)) != len(ids):
            out.append("duplicate signal group ids")
        known = set(ids)
        for pair in self.conflicts | self.conditional:
            if len(pair) != 2 or not pair <= known:
                out.append(f"conflict pair {sorted(pair)} names unknown groups")
        if self.conflicts & self.conditional:
            out.append("a pair is both conflicting and conditionally compatible")
        for pair in self.conflicts:
            if len(pair) != 2:
                continue
            a, b = sorted(pair)
            for i, j in ((a, b), (b, a)):
                if (i, j) not in self.intergreen:
                    out.append(f"no intergreen for conflicting pair {i}->{j}")
        for g, e in self.early_end_s.items():
            if g not in known or e < 0:
                out.append(f"early end for {g} must name a group and be >= 0")
        for (i, j), z in self.intergreen.items():
            if not self.conflicting(i, j):
                out.append(f"intergreen {i}->{j} given for groups that do not conflict")
            if z < 0:
                out.append(f"negative intergreen {i}->{j}")
        stage_ids = [s.id for s in (*self.stages, *self.overlap_stages)]
        if len(set(stage_ids)) != len(stage_ids):
            out.append("duplicate stage ids")
        for stage in self.overlap_stages:
            if not any(self.overlap_position(stage.id, tuple(s.id for s in self.stages))):
                out.append(f"overlap stage {stage.id} carries groups of no two consecutive "
                           "stages (it must share groups with both and hold no others)")
        for stage in (*self.stages, *self.overlap_stages):
            unknown = stage.groups - known
            if unknown:
                out.append(f"stage {stage.id} names unknown groups {sorted(unknown)}")
            for a in stage.groups:
                for b in stage.groups:
                    if a < b and self.conflicting(a, b):
                        out.append(f"stage {stage.id} releases conflicting groups {a} and {b}")
        links = [link for g in self.groups for link in g.links]
        if len(set(links)) != len(links):
            out.append("a link index belongs to more than one signal group")
        if self.link_count and any(not 0 <= link < self.link_count for link in links):
            out.append("a link index is outside the traffic light's state string")
        if not 0 < self.max_cycle_s <= CYCLE_CEILING_S:
            out.append(f"max cycle {self.max_cycle_s} s outside 1..{CYCLE_CEILING_S} s")
        return out


def conflict_pairs(pairs: Iterable[tuple[str, str]]) -> frozenset[frozenset[str]]:
    """Build a symmetric conflict set from (a, b) tuples."""
    return frozenset(_pair(a, b) for a, b in pairs if a != b)
