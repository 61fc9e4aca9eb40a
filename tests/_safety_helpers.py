"""A small four-arm test junction and program generators for the safety tests.

The junction (not the Schlosskreuzung): arms N, S (50 km/h) and W, E (60 km/h).

- K1 N/S through+right, K2 N/S protected left, K3 W/E through+right,
  K4 W/E protected left (vehicles);
- R1 bicycles along N/S;
- F1 pedestrians across the W and E arms, F2 across the N and S arms.

K1 turning right passes F1's crossing, K3 turning right passes F2's: both are
conditionally compatible (bedingt verträglich).  Intergreens are typical
values: 5-6 s between vehicle streams, 8-10 s after a pedestrian green
(clearance of a wide crossing), 4-6 s after bicycles (no vehicle length).
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import strategies as st

from controller.plans import SignalProgram, StagePlan, compile_plan
from controller.signals import GroupKind, JunctionSignals, SignalGroup, Stage, conflict_pairs

V = GroupKind.VEHICLE


def _z() -> dict[tuple[str, str], int]:
    z = {
        ("K1", "K2"): 5, ("K2", "K1"): 6,
        ("K1", "K3"): 6, ("K3", "K1"): 6,
        ("K1", "K4"): 5, ("K4", "K1"): 6,
        ("K1", "F2"): 5, ("F2", "K1"): 10,
        ("K2", "K3"): 6, ("K3", "K2"): 5,
        ("K2", "K4"): 5, ("K4", "K2"): 5,
        ("K2", "F1"): 5, ("F1", "K2"): 10,
        ("K2", "R1"): 5, ("R1", "K2"): 4,
        ("K3", "K4"): 5, ("K4", "K3"): 6,
        ("K3", "R1"): 6, ("R1", "K3"): 5,
        ("K3", "F1"): 5, ("F1", "K3"): 9,
        ("K4", "R1"): 5, ("R1", "K4"): 5,
        ("K4", "F2"): 5, ("F2", "K4"): 9,
        ("R1", "F2"): 6, ("F2", "R1"): 8,
    }
    return z


def junction(max_red_s: int = 100, max_cycle_s: int = 90) -> JunctionSignals:
    groups = (
        SignalGroup("K1", V, "N", (0, 1), 8, 3, 1, max_red_s, 50, "N/S through+right"),
        SignalGroup("K2", V, "N", (2,), 5, 3, 1, max_red_s, 50, "N/S left"),
        SignalGroup("K3", V, "W", (3, 4), 8, 4, 1, max_red_s, 60, "W/E through+right"),
        SignalGroup("K4", V, "W", (5,), 5, 4, 1, max_red_s, 60, "W/E left"),
        SignalGroup("R1", GroupKind.BICYCLE, "N", (6,), 5, 3, 1, max_red_s, 50, "bicycles N/S"),
        SignalGroup("F1", GroupKind.PEDESTRIAN, "W", (7,), 6, 0, 0, max_red_s, 50, "crossing W/E"),
        SignalGroup("F2", GroupKind.PEDESTRIAN, "N", (8,), 6, 0, 0, max_red_s, 50, "crossing N/S"),
    )
    z = _z()
    return JunctionSignals(
        tls_id="testkreuz",
        groups=groups,
        conflicts=conflict_pairs(z),
        intergreen=z,
        stages=(
            Stage("S1", frozenset({"K1", "R1", "F1"})),
            Stage("S2", frozenset({"K2", "F2"})),
            Stage("S3", frozenset({"K3", "F2"})),
            Stage("S4", frozenset({"K4", "F1"})),
            Stage("S5", frozenset({"F1", "F2"})),
        ),
        conditional=frozenset({frozenset({"K1", "F1"}), frozenset({"K3", "F2"})}),
        link_count=9,
        max_cycle_s=max_cycle_s,
    )


J = junction()
STAGES = ("S1", "S2", "S3", "S4", "S5")


def program(cycle: int, greens: dict[str, tuple[tuple[int, int], ...]],
            pid: str = "P") -> SignalProgram:
    """A program for ``J``; groups not named get no green."""
    full = {g: greens.get(g, ()) for g in J.group_ids}
    return SignalProgram(id=pid, cycle_s=cycle, offset_s=0, greens=full)


def base() -> SignalProgram:
    """A valid four-stage program compiled from S1-S4."""
    return compile_plan(J, StagePlan(("S1", "S2", "S3", "S4"), (20, 8, 18, 7)), "base")


# -- generators ------------------------------------------------------------------


@st.composite
def stage_plans(draw: st.DrawFn) -> SignalProgram:
    """(a) compiled stage plans: usually all four main stages, sometimes others."""
    if draw(st.integers(0, 9)) < 8:
        seq = list(draw(st.permutations(["S1", "S2", "S3", "S4"])))
        if draw(st.integers(0, 3)) == 0:
            seq.insert(draw(st.integers(0, 4)), "S5")
    else:
        seq = draw(st.lists(st.sampled_from(STAGES), min_size=1, max_size=6))
    cleaned: list[str] = []
    for s in seq:
        if not cleaned or cleaned[-1] != s:
            cleaned.append(s)
    if len(cleaned) > 1 and cleaned[0] == cleaned[-1]:
        cleaned.pop()
    if draw(st.integers(0, 9)) < 8:
        # Around each stage's minimum green, so many plans are valid.
        floors = [max(J.group(g).min_green_s for g in J.stage(s).groups) for s in cleaned]
        greens = [draw(st.integers(f, f + 8)) for f in floors]
    else:
        greens = [draw(st.integers(0, 25)) for _ in cleaned]
    if len(cleaned) == 1:
        greens[0] = max(greens[0], 1)
    return compile_plan(J, StagePlan(tuple(cleaned), tuple(greens)), "a")


def _shift(ivs: list[tuple[int, int]], k: int, d: int, n: int) -> None:
    s, e = ivs[k]
    s2 = (s + d) % n
    ivs[k] = (s2, s2 + (e - s))


@st.composite
def perturbed(draw: st.DrawFn) -> SignalProgram:
    """(b) a compiled plan with one to three intervals shifted, cut, stretched, split or dropped."""
    prog = draw(stage_plans())
    n = prog.cycle_s
    greens = {g: list(ivs) for g, ivs in prog.greens.items()}
    for _ in range(draw(st.integers(1, 3))):
        g = draw(st.sampled_from(J.group_ids))
        ivs = greens[g]
        if not ivs:
            continue
        k = draw(st.integers(0, len(ivs) - 1))
        s, e = ivs[k]
        op = draw(st.sampled_from(["shift", "start", "end", "drop", "split"]))
        d = draw(st.integers(-6, 6).filter(lambda x: x != 0))
        if op == "shift":
            _shift(ivs, k, d, n)
        elif op == "start":
            s2 = min(s + d, e - 1)
            ivs[k] = (s2 % n, s2 % n + (e - s2))
        elif op == "end":
            ivs[k] = (s, max(s + 1, min(e + d, s + n)))
        elif op == "drop":
            ivs.pop(k)
        elif e - s >= 3:
            cut = draw(st.integers(s + 1, e - 2))
            hole = draw(st.integers(1, min(6, e - 1 - cut)))
            ivs[k] = (s, cut)
            s2 = cut + hole
            ivs.insert(k + 1, (s2 % n, s2 % n + (e - s2)))
    return SignalProgram("b", n, 0, {g: tuple(ivs) for g, ivs in greens.items()})


@st.composite
def arbitrary(draw: st.DrawFn) -> SignalProgram:
    """(c) arbitrary interval sets: random cycle, up to three random intervals per group."""
    n = draw(st.integers(8, 130))
    greens: dict[str, tuple[tuple[int, int], ...]] = {}
    tidy = draw(st.booleans())
    for g in J.group_ids:
        if tidy:
            # Sorted cut points: well formed, mostly conflicting.
            cuts = sorted(draw(st.sets(st.integers(0, n - 1), max_size=4)))
            pairs = list(zip(cuts[0::2], cuts[1::2], strict=False))
            greens[g] = tuple((a, b) for a, b in pairs if b > a)
        else:
            k = draw(st.integers(0, 3))
            ivs = []
            for _ in range(k):
                s = draw(st.integers(-2, n))
                ivs.append((s, s + draw(st.integers(0, n + 2))))
            greens[g] = tuple(ivs)
    if draw(st.integers(0, 19)) == 0:
        greens.pop(draw(st.sampled_from(J.group_ids)))
    return SignalProgram("c", n, 0, greens)


def any_program() -> st.SearchStrategy[SignalProgram]:
    return st.one_of(stage_plans(), perturbed(), arbitrary())


def rule_keys(items: list[tuple[str, tuple[str, ...]]]) -> set[tuple[str, tuple[str, ...]]]:
    """Rule and groups, with V6 reduced to the rule (the two checks word it differently)."""
    return {(r, g if r != "V6" else ()) for r, g in items}


Check = Callable[[JunctionSignals, SignalProgram], object]
