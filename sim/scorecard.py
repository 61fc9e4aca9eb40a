"""The adaptive controller's targets, scored from KPI records (Zielerreichung).

Issue 3 sets the bar per Schlosskreuzung scenario: mean vehicle delay at most
0.75 x the Webster fixed-time plan and at most 0.90 x SUMO actuated control,
pedestrian and bus delay no worse than the fixed-time plan; over all scenarios
within 10 % of the oracle; zero collisions.  ``score`` turns the records of a
benchmark (``bench/traffic.py``, or several of its ``kpis.json`` merged) into
one ``Scorecard``: per scenario and target the ratio, whether it is met and the
spread, and the same over all runs.

Ratios compare like with like: only the seeds both controllers ran enter, and a
ratio is the ratio of the two means over those seeds (the targets speak of mean
delays).  The spread is the 95 % Student-t half-width of the per-seed ratios, so
a reader sees at once whether a miss or a pass is inside the noise.

Pure: no I/O.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats as st

from controller.errors import ConfigError
from sim.kpis import RunKpis

__all__ = [
    "DEFAULT_TARGETS",
    "ORACLE_LIMIT",
    "Score",
    "Scorecard",
    "Target",
    "ci95_half_width",
    "format_scorecard",
    "merge_records",
    "score",
]


@dataclass(frozen=True)
class Target:
    """``attr`` of the controller under test over that of ``base``, at most ``limit``."""

    label: str
    attr: str
    base: str
    limit: float


DEFAULT_TARGETS: tuple[Target, ...] = (
    Target("vehicle / fixed", "vehicle_delay_s", "fixed", 0.75),
    Target("vehicle / actuated", "vehicle_delay_s", "actuated", 0.90),
    Target("pedestrian / fixed", "pedestrian_delay_s", "fixed", 1.0),
    Target("bus / fixed", "bus_delay_s", "fixed", 1.0),
)

#: Over all runs, the controller's mean vehicle delay over the oracle's.
ORACLE_LIMIT = 1.10


@dataclass(frozen=True)
class Score:
    """One target on one set of runs."""

    target: Target
    #: Mean of the controller over mean of the base, on the seeds both have.
    ratio: float | None
    #: 95 % half-width of the per-seed ratios (nan with one seed, None without data).
    ci95: float | None
    #: Seeds (or scenario-seed pairs) in the comparison.
    n: int

    @property
    def met(self) -> bool | None:
        return None if self.ratio is None else self.ratio <= self.target.limit

    @property
    def half_width(self) -> float | None:
        """``ci95`` when there is a spread to show, else None (one seed or no data)."""
        return None if self.ci95 is None or math.isnan(self.ci95) else self.ci95


@dataclass(frozen=True)
class Scorecard:
    """Scores per scenario and over all runs, plus oracle and collisions."""

    controller: str
    targets: tuple[Target, ...]
    #: scenario -> one Score per target, in ``targets`` order.
    scenarios: Mapping[str, tuple[Score, ...]]
    #: One Score per target over every (scenario, seed) pair.
    overall: tuple[Score, ...]
    #: Controller over oracle on all shared runs (target ORACLE_LIMIT); None: no oracle runs.
    oracle: Score | None
    #: Collisions in the controller's runs, per scenario.
    collisions: Mapping[str, int]

    @property
    def missed(self) -> list[str]:
        """Every target missed, as "<scenario>: <target> <ratio> (limit <limit>)"."""
        out: list[str] = []
        for scenario, scores in self.scenarios.items():
            for s in scores:
                if s.met is False:
                    out.append(f"{scenario}: {s.target.label} {s.ratio:.3f} "
                               f"(limit {s.target.limit:.2f})")
        if self.oracle is not None and self.oracle.met is False:
            out.append(f"all: {self.oracle.target.label} {self.oracle.ratio:.3f} "
                       f"(limit {self.oracle.target.limit:.2f})")
        if sum(self.collisions.values()):
            out.append(f"all: {sum(self.collisions.values())} collisions (target 0)")
        return out


def merge_records(*batches: Sequence[RunKpis]) -> list[RunKpis]:
    """Records of several benchmarks as one list; a run present twice is an error.

    Mixing two runs of the same (scenario, controller, seed) would silently
    average two code versions, so it is refused with the run named.
    """
    seen: set[tuple[str, str, int]] = set()
    out: list[RunKpis] = []
    for batch in batches:
        for r in batch:
            key = (r.scenario, r.controller, r.seed)
            if key in seen:
                raise ConfigError(
                    f"run {r.scenario}/{r.controller}/seed {r.seed} appears twice; "
                    "give each run once"
                )
            seen.add(key)
            out.append(r)
    return out


def ci95_half_width(values: Sequence[float]) -> float:
    """Half-width of the 95 % Student-t confidence interval of the mean (nan below 2 values)."""
    if len(values) < 2:
        return math.nan
    t = float(st.t.ppf(0.975, len(values) - 1))
    return t * statistics.stdev(values) / math.sqrt(len(values))


def _compare(
    target: Target,
    mine: Mapping[tuple[str, int], RunKpis],
    base: Mapping[tuple[str, int], RunKpis],
) -> Score:
    pairs: list[tuple[float, float]] = []
    for key in sorted(set(mine) & set(base)):
        a, b = getattr(mine[key], target.attr), getattr(base[key], target.attr)
        if a is not None and b is not None and b > 0:
            pairs.append((float(a), float(b)))
    if not pairs:
        return Score(target, None, None, 0)
    ratio = statistics.fmean(a for a, _ in pairs) / statistics.fmean(b for _, b in pairs)
    return Score(target, ratio, ci95_half_width([a / b for a, b in pairs]), len(pairs))


def score(
    records: Sequence[RunKpis],
    controller: str = "adaptive",
    targets: Sequence[Target] = DEFAULT_TARGETS,
    oracle: str = "oracle",
) -> Scorecard:
    """Score ``controller`` against ``targets``; ConfigError when it has no runs."""
    runs: dict[str, dict[tuple[str, int], RunKpis]] = {}
    for r in records:
        runs.setdefault(r.controller, {})[(r.scenario, r.seed)] = r
    mine = runs.get(controller)
    if not mine:
        have = ", ".join(sorted(runs)) or "none"
        raise ConfigError(f"no runs of controller {controller!r} to score (runs of: {have})")
    scenarios = list(dict.fromkeys(s for s, _ in mine))
    per: dict[str, tuple[Score, ...]] = {}
    for scenario in scenarios:
        own = {k: v for k, v in mine.items() if k[0] == scenario}
        per[scenario] = tuple(_compare(t, own, runs.get(t.base, {})) for t in targets)
    overall = tuple(_compare(t, mine, runs.get(t.base, {})) for t in targets)
    oracle_score = None
    if oracle in runs and oracle != controller:
        oracle_score = _compare(
            Target(f"vehicle / {oracle}", "vehicle_delay_s", oracle, ORACLE_LIMIT),
            mine, runs[oracle],
        )
    collisions = {s: sum(r.collisions for k, r in mine.items() if k[0] == s) for s in scenarios}
    return Scorecard(controller, tuple(targets), per, overall, oracle_score, collisions)


def _cell(s: Score) -> str:
    if s.ratio is None:
        return "n/a"
    spread = "" if s.half_width is None else f"±{s.half_width:.2f}"
    return f"{s.ratio:.3f}{spread} {'met' if s.met else 'MISS'}"


def format_scorecard(card: Scorecard) -> str:
    """The scorecard as a plain-text table (one row per scenario, then all runs)."""
    width = 2 + max(18, *(len(t.label) + 8 for t in card.targets))
    head = f"{'scenario':<20}" + "".join(
        f"{t.label + f' <= {t.limit:.2f}':>{width}}" for t in card.targets
    ) + f"{'collisions':>12}"
    lines = [f"targets of {card.controller} (ratio of means on shared seeds, "
             "± 95 % CI of the per-seed ratios)", head, "-" * len(head)]
    for scenario, scores in card.scenarios.items():
        lines.append(f"{scenario:<20}" + "".join(f"{_cell(s):>{width}}" for s in scores)
                     + f"{card.collisions[scenario]:>12}")
    lines.append(f"{'all runs':<20}" + "".join(f"{_cell(s):>{width}}" for s in card.overall)
                 + f"{sum(card.collisions.values()):>12}")
    if card.oracle is not None:
        lines.append(f"{card.oracle.target.label} over all runs (limit "
                     f"{card.oracle.target.limit:.2f}, n={card.oracle.n}): {_cell(card.oracle)}")
    met = sum(1 for scores in card.scenarios.values() for s in scores if s.met)
    known = sum(1 for scores in card.scenarios.values() for s in scores if s.met is not None)
    lines.append(f"{met} of {known} scenario targets met")
    return "\n".join(lines)
