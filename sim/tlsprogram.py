"""Translation between signal group states and SUMO's per-link traffic light states.

SUMO shows one character per link index of a traffic light.  A signal group
drives all its links.  A green vehicle group whose conditionally compatible
partner (pedestrians or bicycles on the crossing it turns across) is green at
the same time shows SUMO's minor green ``g``: its drivers yield.

``write_native_program`` turns a compiled signal program into a SUMO
``tlLogic`` of type ``actuated`` or ``delay_based``: each stage's green time
becomes one extendable phase (minimum green .. maximum green), each second of
a stage transition a fixed phase (merged where consecutive seconds are
equal), so SUMO's own logics run with the same stage sequence, intergreens
and minimum greens as every other controller.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path

from controller.plans import SignalProgram, group_states, room_shares, stage_timing
from controller.signals import GroupKind, JunctionSignals, SignalState

_SUMO_TO_STATE = {
    "G": SignalState.GREEN.value,
    "g": SignalState.GREEN.value,
    "y": SignalState.YELLOW.value,
    "Y": SignalState.YELLOW.value,
    "u": SignalState.RED_YELLOW.value,
    "r": SignalState.RED.value,
    "s": SignalState.RED.value,
    "O": SignalState.GREEN.value,
    "o": SignalState.GREEN.value,
}


class LinkStates:
    """Encode group states as a SUMO state string and decode them back."""

    def __init__(self, signals: JunctionSignals, minor_links: frozenset[int] | None = None) -> None:
        """``minor_links``: link indices that yield (from the network's right-of-way), if known;
        otherwise every link of a vehicle group yields while a conditionally compatible
        pedestrian or bicycle group is green."""
        n = signals.link_count or 1 + max(
            (link for g in signals.groups for link in g.links), default=-1
        )
        self.link_count = n
        self._group_of_link: list[str | None] = [None] * n
        for g in signals.groups:
            for link in g.links:
                self._group_of_link[link] = g.id
        self._yields_to: dict[str, tuple[str, ...]] = {}
        for g in signals.groups:
            if g.kind in (GroupKind.VEHICLE, GroupKind.BUS):
                partners = tuple(
                    p.id
                    for p in signals.groups
                    if p.kind in (GroupKind.PEDESTRIAN, GroupKind.BICYCLE)
                    and signals.conditionally_compatible(g.id, p.id)
                )
                if partners:
                    self._yields_to[g.id] = partners
        self._first_link = {g.id: g.links[0] for g in signals.groups if g.links}
        self._minor = minor_links

    def encode(self, states: Mapping[str, str]) -> str:
        chars: list[str] = []
        for gid in self._group_of_link:
            if gid is None:
                # A link no signal group claims stays red: safe by construction.
                chars.append("r")
                continue
            st = states.get(gid, SignalState.RED.value)
            if st == SignalState.GREEN.value and self._minor is not None:
                chars.append("g" if len(chars) in self._minor else "G")
            elif st == SignalState.GREEN.value:
                partners = self._yields_to.get(gid, ())
                minor = any(states.get(p) == SignalState.GREEN.value for p in partners)
                chars.append("g" if minor else "G")
            else:
                chars.append(st)
        return "".join(chars)

    def decode(self, link_state: str) -> dict[str, str]:
        """Group states read back from SUMO (the state of each group's first link)."""
        return {
            gid: _SUMO_TO_STATE.get(link_state[idx], SignalState.RED.value)
            for gid, idx in self._first_link.items()
            if idx < len(link_state)
        }


def write_native_program(
    path: Path,
    signals: JunctionSignals,
    program: SignalProgram,
    *,
    logic_type: str,
    program_id: str,
    detectors: Mapping[str, str] | None = None,
    max_green_s: int = 60,
    minor_links: frozenset[int] | None = None,
) -> Path:
    """Write a SUMO tlLogic (actuated or delay_based) derived from a stage-based program.

    ``detectors`` maps incoming lane ids to our induction loop ids, so SUMO's
    actuated logic uses the installation's own detectors (SUMO's custom
    detector parameters) instead of placing its own.
    """
    plan = program.stage_plan
    if plan is None:
        raise ValueError("a native program needs a stage-based signal program")
    links = LinkStates(signals, minor_links)
    per_group = group_states(signals, program)
    cycle = program.cycle_s

    def state_at(t: int) -> str:
        return links.encode({g: s[t % cycle] for g, s in per_group.items()})

    root = ET.Element("additional")
    logic = ET.SubElement(
        root,
        "tlLogic",
        {"id": signals.tls_id, "type": logic_type, "programID": program_id, "offset": "0"},
    )
    if logic_type == "actuated":
        params = (("max-gap", "3.0"), ("passing-time", "2.0"), ("show-detectors", "false"))
        for key, value in params:
            ET.SubElement(logic, "param", {"key": key, "value": value})
        for lane, det in sorted((detectors or {}).items()):
            ET.SubElement(logic, "param", {"key": lane, "value": det})
    timing = stage_timing(signals, plan)
    # SUMO may stretch green times up to maxDur; share the room up to the maximum cycle
    # among the stages in proportion to their greens, so the actuated cycle never exceeds
    # it and no group waits longer than the rules allow.
    shares = room_shares(signals, program)
    for k, stage_id in enumerate(plan.sequence):
        green_start, green_end, next_start = timing[k]
        # The extendable phase is the stage's green time up to the first change of any
        # signal (an early-ending pedestrian group); the rest runs as fixed phases.
        first = state_at(green_start)
        steady_end = green_start
        while steady_end < green_end and state_at(steady_end) == first:
            steady_end += 1
        green = steady_end - green_start
        tail = green_end - steady_end
        min_green = max(
            signals.group(g).min_green_s + signals.early_end(g)
            for g in signals.stage(stage_id).groups
        ) - tail
        if green > 0:
            ET.SubElement(
                logic,
                "phase",
                {
                    "duration": str(green),
                    "minDur": str(max(1, min(min_green, green))),
                    "maxDur": str(
                        min(max_green_s, green + shares[k])
                    ),
                    "state": first,
                    "name": stage_id,
                },
            )
        # Early ends and transition seconds, merged where consecutive seconds are equal.
        for state, duration in _merge([state_at(s) for s in range(steady_end, next_start)]):
            ET.SubElement(logic, "phase", {"duration": str(duration), "state": state})
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path


def _merge(states: Sequence[str]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for s in states:
        if out and out[-1][0] == s:
            out[-1] = (s, out[-1][1] + 1)
        else:
            out.append((s, 1))
    return out
