"""Stage plans and signal programs, and the compiler from one to the other.

Two levels, as in a German signal plan (Signalprogramm):

- ``StagePlan``: what the optimiser chooses: a stage sequence, the green time
  (Freigabezeit) of each stage, and an offset (Versatzzeit).
- ``SignalProgram``: the signal timing diagram (Signalzeitenplan) the hardware
  runs: the cycle and, per signal group, its green intervals within the cycle.
  This is what the safety validator checks and what goes on the wire.

The compiler inserts a stage transition (Phasenübergang) between consecutive
stages, derived from the intergreen matrix: groups that end stop at the end of
the stage's green time; each starting group begins as soon as every
intergreen from the ending groups it conflicts with has run.  The optimiser
only chooses stage greens; it cannot shorten a transition.

Cycle time 0 is the start of the first stage's green time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from controller.signals import JunctionSignals, SignalState

#: A green interval ``(start, end)`` in cycle seconds, end exclusive.
#: ``0 <= start < cycle`` and ``start < end <= start + cycle``; an interval with
#: ``end > cycle`` wraps past the cycle boundary.
Interval = tuple[int, int]


@dataclass(frozen=True, slots=True)
class StagePlan:
    """A stage sequence with green times: the optimiser's decision variables."""

    sequence: tuple[str, ...]
    greens_s: tuple[int, ...]
    offset_s: int = 0

    def __post_init__(self) -> None:
        if len(self.sequence) != len(self.greens_s):
            raise ValueError("a stage plan needs one green time per stage")


@dataclass(frozen=True, slots=True)
class Transition:
    """Phasenübergang from one stage to the next.

    ``starts`` maps each starting group to its green start, in seconds after the
    end of the previous stage's green time; ``length_s`` is when the next
    stage's green time begins.
    """

    from_stage: str
    to_stage: str
    ending: frozenset[str]
    starting: Mapping[str, int]
    continuing: frozenset[str]
    length_s: int


@dataclass(frozen=True)
class SignalProgram:
    """Signalzeitenplan: cycle, offset and the green intervals of every signal group."""

    id: str
    cycle_s: int
    offset_s: int
    greens: Mapping[str, tuple[Interval, ...]]
    stage_plan: StagePlan | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        frozen = {g: tuple(tuple(iv) for iv in ivs) for g, ivs in self.greens.items()}
        object.__setattr__(self, "greens", MappingProxyType(frozen))

    def is_green(self, group_id: str, t: int) -> bool:
        """Whether ``group_id`` is green at cycle second ``t`` (any integer)."""
        tc = t % self.cycle_s
        for start, end in self.greens.get(group_id, ()):
            if start <= tc < end or start <= tc + self.cycle_s < end:
                return True
        return False

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {
            "id": self.id,
            "cycle_s": self.cycle_s,
            "offset_s": self.offset_s,
            "greens": {g: [list(iv) for iv in ivs] for g, ivs in self.greens.items()},
        }
        if self.stage_plan is not None:
            data["stages"] = [
                {"stage": s, "green_s": g}
                for s, g in zip(self.stage_plan.sequence, self.stage_plan.greens_s, strict=True)
            ]
        return data


def transition(junction: JunctionSignals, from_stage: str, to_stage: str) -> Transition:
    """Stage transition derived from the intergreen matrix."""
    a = junction.stage(from_stage).groups
    b = junction.stage(to_stage).groups
    ending = a - b
    starting: dict[str, int] = {}
    for j in sorted(b - a):
        waits = [junction.z(i, j) for i in ending if junction.conflicting(i, j)]
        # A starting group also waits for its own red-yellow to fit after the
        # previous green time ends, so the stage boundary stays a clean cut.
        starting[j] = max([0, *waits])
    ending_clear = [junction.group(i).yellow_s for i in ending]
    length = max([0, *starting.values(), *ending_clear])
    return Transition(
        from_stage=from_stage,
        to_stage=to_stage,
        ending=frozenset(ending),
        starting=MappingProxyType(starting),
        continuing=frozenset(a & b),
        length_s=length,
    )


def transitions(junction: JunctionSignals, sequence: Sequence[str]) -> tuple[Transition, ...]:
    """Transitions k -> k+1 for a cyclic stage sequence (the last one wraps to the first)."""
    n = len(sequence)
    return tuple(
        transition(junction, sequence[k], sequence[(k + 1) % n]) for k in range(n)
    )


def lost_time_s(junction: JunctionSignals, sequence: Sequence[str]) -> int:
    """Sum of transition lengths over one cycle: time no stage's green time runs."""
    return sum(t.length_s for t in transitions(junction, sequence))


def compile_plan(junction: JunctionSignals, plan: StagePlan, program_id: str) -> SignalProgram:
    """Compile a stage plan into the signal timing diagram the hardware runs.

    Raises ``ValueError`` for a sequence the compiler cannot express (unknown
    stage, the same stage twice in a row, negative green); everything else,
    including too-short greens, is for the safety validator to judge.
    """
    seq = plan.sequence
    if not seq:
        raise ValueError("empty stage sequence")
    for s in seq:
        junction.stage(s)  # KeyError -> unknown stage
    for k, s in enumerate(seq):
        if len(seq) > 1 and seq[(k + 1) % len(seq)] == s:
            raise ValueError(f"stage {s} follows itself; merge the two green times")
    if any(g < 0 for g in plan.greens_s):
        raise ValueError("negative green time")
    trans = transitions(junction, seq) if len(seq) > 1 else ()
    cycle = sum(plan.greens_s) + sum(t.length_s for t in trans)
    if cycle <= 0:
        raise ValueError("cycle of zero length")

    green = {g: [False] * cycle for g in junction.group_ids}
    t = 0
    for k, stage_id in enumerate(seq):
        for g in junction.stage(stage_id).groups:
            for sec in range(t, t + plan.greens_s[k]):
                green[g][sec % cycle] = True
        t += plan.greens_s[k]
        if trans:
            tr = trans[k]
            for g in tr.continuing:
                for sec in range(t, t + tr.length_s):
                    green[g][sec % cycle] = True
            for g, start in tr.starting.items():
                for sec in range(t + start, t + tr.length_s):
                    green[g][sec % cycle] = True
            t += tr.length_s
    greens = {g: intervals_from_mask(mask) for g, mask in green.items()}
    return SignalProgram(
        id=program_id, cycle_s=cycle, offset_s=plan.offset_s % cycle, greens=greens,
        stage_plan=plan,
    )


def intervals_from_mask(mask: Sequence[bool]) -> tuple[Interval, ...]:
    """Cyclic green intervals of a per-second green mask."""
    n = len(mask)
    if n == 0 or not any(mask):
        return ()
    if all(mask):
        return ((0, n),)
    # Start scanning just after a red second so a run across the wrap stays whole.
    first_red = mask.index(False)
    out: list[Interval] = []
    run_start: int | None = None
    for step in range(1, n + 1):
        s = (first_red + step) % n
        if mask[s] and run_start is None:
            run_start = first_red + step
        elif not mask[s] and run_start is not None:
            out.append(_norm(run_start, first_red + step, n))
            run_start = None
    if run_start is not None:
        out.append(_norm(run_start, first_red + n + 1, n))
    return tuple(sorted(out))


def _norm(start: int, end: int, n: int) -> Interval:
    shift = (start // n) * n
    return (start - shift, end - shift)


def group_states(junction: JunctionSignals, program: SignalProgram) -> Mapping[str, str]:
    """Per group, one state character (``SignalState``) per cycle second.

    Green where the program says so; yellow for ``yellow_s`` after each green
    end; red-yellow for ``red_yellow_s`` before each green start; red
    otherwise.  Where these overlap (an invalid program) green wins, then
    yellow, so the validator sees the conflict rather than a hidden one.
    """
    n = program.cycle_s
    out: dict[str, str] = {}
    for g in junction.groups:
        states = [SignalState.RED.value] * n
        for start, _end in program.greens.get(g.id, ()):
            for s in range(start - g.red_yellow_s, start):
                states[s % n] = SignalState.RED_YELLOW.value
        for start, end in program.greens.get(g.id, ()):
            if end - start >= n:
                continue
            for s in range(end, end + g.yellow_s):
                states[s % n] = SignalState.YELLOW.value
        for start, end in program.greens.get(g.id, ()):
            for s in range(start, end):
                states[s % n] = SignalState.GREEN.value
        out[g.id] = "".join(states)
    return MappingProxyType(out)


def stage_green_times(program: SignalProgram) -> Mapping[str, int]:
    """Total green seconds per group and cycle."""
    return MappingProxyType(
        {g: sum(e - s for s, e in ivs) for g, ivs in program.greens.items()}
    )
