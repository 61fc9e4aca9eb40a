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
    #: Pedestrian groups whose green ends after their minimum green (Mindestfreigabezeit)
    #: instead of running with their stage: the right turners they block get the rest of
    #: the stage.  Empty: every group runs as long as its stage allows.
    short_walks: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if len(self.sequence) != len(self.greens_s):
            raise ValueError("a stage plan needs one green time per stage")
        object.__setattr__(self, "short_walks", frozenset(self.short_walks))


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
    """Signalzeitenplan: cycle, offset and the green intervals of every signal group.

    Mappings are plain dicts (picklable, so programs travel to worker
    processes); treat them as read-only.
    """

    id: str
    cycle_s: int
    offset_s: int
    greens: Mapping[str, tuple[Interval, ...]]
    stage_plan: StagePlan | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        frozen = {g: tuple(tuple(iv) for iv in ivs) for g, ivs in self.greens.items()}
        object.__setattr__(self, "greens", dict(frozen))

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


def transition(
    junction: JunctionSignals,
    from_stage: str,
    to_stage: str,
    since_end_s: Mapping[str, int] | None = None,
    min_starts: Mapping[str, int] | None = None,
) -> Transition:
    """Stage transition derived from the intergreen matrix.

    Groups that end stop at the transition start.  Each starting group ``j``
    begins once every intergreen ``Z[i][j]`` has run, for the groups ``i`` that
    end now and for groups that ended earlier: ``since_end_s[i]`` says how many
    seconds before the transition start ``i``'s last green ended (a short
    stage between two others can leave too little time for a long pedestrian
    clearance otherwise).  ``min_starts`` keeps starts from an earlier pass.
    """
    a = junction.stage(from_stage).groups
    b = junction.stage(to_stage).groups
    ending = a - b
    since: dict[str, int] = dict(since_end_s or {})
    for i in ending:
        # A group that ended early (``early_end_s``) is passed in with its real age.
        since.setdefault(i, 0)
    starting: dict[str, int] = {}
    for j in sorted(b - a):
        waits = [
            junction.z(i, j) - since_i
            for i, since_i in since.items()
            if i not in a - ending and junction.conflicting(i, j)
        ]
        # A starting group's red-yellow runs inside the transition, never in the
        # previous stage's green time, so every stage's green time shows one state.
        floor = max((min_starts or {}).get(j, 0), junction.group(j).red_yellow_s)
        starting[j] = max([0, floor, *waits])
    # The next stage's green time starts once every starting group is green and
    # every ending group has finished its yellow.
    ending_clear = [junction.group(i).yellow_s for i in ending]
    length = max([0, *starting.values(), *ending_clear])
    return Transition(
        from_stage=from_stage,
        to_stage=to_stage,
        ending=frozenset(ending),
        starting=dict(starting),
        continuing=frozenset(a & b),
        length_s=length,
    )


def transitions(junction: JunctionSignals, sequence: Sequence[str]) -> tuple[Transition, ...]:
    """Transitions k -> k+1 for a cyclic stage sequence (the last one wraps to the first).

    Only the groups ending at each transition are considered; ``compile_plan``
    refines this with the whole cycle's history.
    """
    n = len(sequence)
    out = []
    for k in range(n):
        a, b = sequence[k], sequence[(k + 1) % n]
        ending = junction.stage(a).groups - junction.stage(b).groups
        early = {i: junction.early_end(i) for i in ending if junction.early_end(i)}
        out.append(transition(junction, a, b, since_end_s=early))
    return tuple(out)


def lost_time_s(junction: JunctionSignals, sequence: Sequence[str]) -> int:
    """Sum of transition lengths over one cycle (Webster's lost time ``L``).

    The classic definition: each transition only waits for the groups ending
    at it.  ``compile_plan`` may lengthen a transition when a very short stage
    leaves too little time for an earlier group's clearance; the compiled
    program's ``cycle_s`` is then longer than ``sum(greens) + L``.
    """
    if len(sequence) < 2:
        return 0
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
    walks = plan.short_walks
    trans = _fixed_point(junction, seq, plan.greens_s, walks) if len(seq) > 1 else ()
    green, _ = _layout(junction, seq, plan.greens_s, trans, walks)
    cycle = len(next(iter(green.values()))) if green else 0
    if cycle <= 0:
        raise ValueError("cycle of zero length")
    greens = {g: intervals_from_mask(mask) for g, mask in green.items()}
    return SignalProgram(
        id=program_id, cycle_s=cycle, offset_s=plan.offset_s % cycle, greens=greens,
        stage_plan=plan,
    )


def stage_timing(junction: JunctionSignals, plan: StagePlan) -> tuple[tuple[int, int, int], ...]:
    """Per stage ``(green_start, green_end, next_green_start)`` in cycle seconds.

    ``green_end`` is where the transition to the next stage begins;
    ``next_green_start`` where it ends (it equals the cycle for the last stage).
    """
    seq = plan.sequence
    trans = _fixed_point(junction, seq, plan.greens_s, plan.short_walks) if len(seq) > 1 else ()
    out: list[tuple[int, int, int]] = []
    t = 0
    for k in range(len(seq)):
        start = t
        t += plan.greens_s[k]
        end = t
        if trans:
            t += trans[k].length_s
        out.append((start, end, t))
    return tuple(out)


def room_shares(junction: JunctionSignals, program: SignalProgram) -> tuple[int, ...]:
    """Per stage of ``program``'s stage plan, its share of the room up to the maximum cycle.

    The seconds between the program's cycle and ``junction.max_cycle_s``, shared in
    proportion to the stages' greens (whole seconds, rounded down): how far a stage may
    stretch beyond the engineer's plan without the cycle passing the maximum.  SUMO's
    actuated baseline (maxDur) and max-pressure's maximum greens both use it.
    """
    plan = program.stage_plan
    if plan is None:
        raise ValueError("room shares need a stage-based signal program")
    greens = [end - start for start, end, _ in stage_timing(junction, plan)]
    total = sum(greens) or 1
    room = max(0, junction.max_cycle_s - program.cycle_s)
    return tuple(room * g // total for g in greens)


def _layout(
    junction: JunctionSignals,
    seq: Sequence[str],
    greens_s: Sequence[int],
    trans: Sequence[Transition],
    short_walks: frozenset[str] = frozenset(),
) -> tuple[dict[str, list[bool]], list[int]]:
    """Per-group green masks over one cycle, and the start second of each transition."""
    cycle = sum(greens_s) + sum(t.length_s for t in trans)
    green = {g: [False] * cycle for g in junction.group_ids}
    starts: list[int] = []
    t = 0
    for k, stage_id in enumerate(seq):
        ending = trans[k].ending if trans else frozenset()
        for g in junction.stage(stage_id).groups:
            # Groups leaving at this transition may end early (early_end_s).
            early = junction.early_end(g) if g in ending else 0
            span = max(0, greens_s[k] - early)
            if g in short_walks:
                span = min(span, junction.group(g).min_green_s)
            for sec in range(t, t + span):
                green[g][sec % cycle] = True
        t += greens_s[k]
        starts.append(t)
        if trans:
            tr = trans[k]
            for g in tr.continuing:
                for sec in range(t, t + tr.length_s):
                    green[g][sec % cycle] = True
            for g, start in tr.starting.items():
                for sec in range(t + start, t + tr.length_s):
                    green[g][sec % cycle] = True
            t += tr.length_s
    return green, starts


def _fixed_point(
    junction: JunctionSignals,
    seq: Sequence[str],
    greens_s: Sequence[int],
    short_walks: frozenset[str] = frozenset(),
) -> tuple[Transition, ...]:
    """Transitions that respect every intergreen over the whole cycle.

    Starts only ever move later, so the iteration is monotone and bounded by
    the largest intergreen; at the fixed point every constraint measured on
    the final layout holds.
    """
    n = len(seq)
    trans = list(transitions(junction, seq))
    for _ in range(4 * n + 8):
        green, starts = _layout(junction, seq, greens_s, trans, short_walks)
        cycle = len(next(iter(green.values())))
        changed = False
        for k in range(n):
            a = junction.stage(seq[k]).groups
            tau = starts[k]
            since: dict[str, int] = {}
            for i, mask in green.items():
                if not any(mask) or (i in a and mask[(tau - 1) % cycle]):
                    continue
                d = 1
                while not mask[(tau - d) % cycle]:
                    d += 1
                since[i] = d - 1
            refined = transition(
                junction, seq[k], seq[(k + 1) % n], since, min_starts=trans[k].starting
            )
            if refined != trans[k]:
                trans[k] = refined
                changed = True
        if not changed:
            return tuple(trans)
    raise ValueError("stage transitions did not settle; check the intergreen matrix")


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
    return dict(out)


def stage_green_times(program: SignalProgram) -> Mapping[str, int]:
    """Total green seconds per group and cycle."""
    return dict(
        {g: sum(e - s for s, e in ivs) for g, ivs in program.greens.items()}
    )
