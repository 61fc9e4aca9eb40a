"""The engineer's report: one self-contained HTML page comparing controllers.

``write_report`` turns KPI records (one per scenario, controller and seed, see
:mod:`sim.kpis`) plus the files in their run folders into ``report.html``:
comparison table, delay bars by mode, queue curves, delay distributions, the
Signalzeitenplan (signal timing diagram) of each controller, stops and CO2.
Images are embedded as base64 PNG and the CSS is inline, so the file can be
mailed or archived alone; each plot is also written to ``plots/`` as PNG.

The page is meant to show where a controller loses as plainly as where it
wins: best and worst value per column are both highlighted, and every KPI on
which a controller is worse than the fixed-time baseline is listed.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from controller.errors import ConfigError
from sim import plots
from sim.kpis import (
    BASELINE,
    MODES,
    QUEUES_FILE,
    TLS_STATES_FILE,
    RunKpis,
    delay_ratio,
    group_records,
    kpi_stat,
    on_shared_seeds,
    read_queues,
    read_time_losses,
    read_tls_states,
)
from sim.scorecard import Score, Scorecard


@dataclass(frozen=True)
class Column:
    """A column of the comparison table."""

    field: str
    header: str
    decimals: int
    lower_is_better: bool
    unit: str = ""


COLUMNS: tuple[Column, ...] = (
    Column("vehicle_delay_s", "vehicle delay", 1, True, "s"),
    Column("insertion_delay_s", "insertion delay", 1, True, "s"),
    Column("car_delay_s", "car delay", 1, True, "s"),
    Column("truck_delay_s", "truck delay", 1, True, "s"),
    Column("bus_delay_s", "bus delay", 1, True, "s"),
    Column("bicycle_delay_s", "bicycle delay", 1, True, "s"),
    Column("pedestrian_delay_s", "pedestrian delay", 1, True, "s"),
    Column("person_delay_s", "person delay", 1, True, "s"),
    Column("stops_per_vehicle", "stops / vehicle", 2, True),
    Column("queue_max_m", "max queue", 0, True, "m"),
    Column("throughput_veh_h", "throughput", 0, False, "veh/h"),
    Column("trips_incomplete", "trips incomplete", 1, True),
    Column("teleports", "teleports", 1, True),
    Column("collisions", "collisions", 1, True),
    Column("emergency_stops", "emergency stops", 1, True),
    Column("co2_kg", "CO2", 1, True, "kg"),
    Column("nox_g", "NOx", 1, True, "g"),
    Column("fuel_l", "fuel", 1, True, "l"),
)

_MODE_FIELDS = {
    "car": "car_delay_s",
    "truck": "truck_delay_s",
    "bus": "bus_delay_s",
    "bicycle": "bicycle_delay_s",
    "pedestrian": "pedestrian_delay_s",
}
assert set(MODES) <= set(_MODE_FIELDS)

#: Used when no cycle can be read from the states (a controller without cycles).
_DEFAULT_WINDOW_CYCLE_S = 90.0

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{border-bottom:2px solid #444}
h2{margin-top:2.5em;border-bottom:1px solid #aaa}
table{border-collapse:collapse;font-size:.85em;margin:1em 0}
th,td{border:1px solid #ccc;padding:.3em .5em;text-align:right;white-space:nowrap}
th{background:#eee}
td.name{text-align:left;font-weight:bold}
td.best{background:#c7ecc7}
td.worst{background:#f6c6c6}
.note{background:#fff6d6;border-left:4px solid #e0b000;padding:.5em 1em}
.warn{background:#fde2e2;border-left:4px solid #c00;padding:.5em 1em}
figure{margin:1.5em 0}
figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.85em;color:#555}
"""

_HOW_TO_READ = """
<h2 id="how-to-read">How to read this</h2>
<ul>
<li><b>Delay</b> is SUMO's <code>timeLoss</code>: the time a trip took longer than it
would at its desired speed on an empty network, in seconds per trip. Only trips that
depart after the warm-up and complete are counted; unfinished trips are counted
separately (<i>trips incomplete</i>) because a controller that lets queues grow
beyond the end of the run would otherwise look better than it is.
<i>Insertion delay</i> is the time a vehicle waited to enter the network because the
queue reached back beyond the modelled arm; <code>timeLoss</code> does not include it.</li>
<li>Every cell is <b>mean ± standard deviation over seeds</b> (the same seeds for every
controller). A difference smaller than the spread is not a result.</li>
<li><span style="background:#c7ecc7">Green</span> marks the best and
<span style="background:#f6c6c6">red</span> the worst controller in each column.
<i>vs fixed</i> is the vehicle delay relative to the fixed-time plan (&lt; 1 is better).
The list below each table names every KPI on which a controller is worse than fixed
time.</li>
<li><b>Teleports, collisions, emergency stops</b> should be 0. SUMO teleports a vehicle
stuck for too long, which hides congestion; a collision or emergency stop points to
a signal timing fault (safety.md).</li>
<li><b>Queue</b> curves show metres of halting vehicles per approach; the grey band
is the warm-up. The <b>delay distribution</b> (ECDF) shows how many trips wait at
most a given time: a curve further left and steeper is better; look at the upper tail
for long waits.</li>
<li>The <b>signal timing diagram</b> (Signalzeitenplan) shows a few cycles after
the warm-up: time runs left to right, one row per signal group; green, yellow, red
and red-yellow as on the street, light green where a movement yields
(bedingt verträglich).</li>
</ul>
"""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "scenario"


class _Page:
    """Collects HTML parts and writes each figure both as PNG file and inline."""

    def __init__(self, plot_dir: Path) -> None:
        self.parts: list[str] = []
        self.plot_dir = plot_dir

    def add(self, text: str) -> None:
        self.parts.append(text)

    def figure(self, fig: Figure, name: str, caption: str) -> None:
        png = plots.figure_png(fig)
        (self.plot_dir / f"{name}.png").write_bytes(png)
        data = base64.b64encode(png).decode("ascii")
        self.add(
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )


def _score_cell(s: Score) -> str:
    if s.ratio is None:
        return "<td>-</td>"
    spread = "" if s.half_width is None else f" ± {s.half_width:.2f}"
    cls = "best" if s.met else "worst"
    return f'<td class="{cls}">{s.ratio:.3f}{spread}</td>'


def _targets_section(page: _Page, card: Scorecard) -> None:
    """Targets met and missed, as table and plot (``sim.scorecard``)."""
    page.add('<h2 id="targets">Targets</h2>')
    page.add(
        f"<p>{html.escape(card.controller)} against each target: ratio of mean delays on "
        "the seeds both controllers ran, ± the 95 % CI of the per-seed ratios. Green: met, "
        "red: missed.</p>"
    )
    head = "".join(
        f"<th>{html.escape(t.label)}<br>&le; {t.limit:.2f}</th>" for t in card.targets
    )
    rows = [f"<tr><th>scenario</th>{head}<th>collisions</th></tr>"]
    for scenario, scores in card.scenarios.items():
        rows.append(
            f'<tr><td class="name">{html.escape(scenario)}</td>'
            + "".join(_score_cell(s) for s in scores)
            + f"<td>{card.collisions[scenario]}</td></tr>"
        )
    rows.append(
        '<tr><td class="name">all runs</td>' + "".join(_score_cell(s) for s in card.overall)
        + f"<td>{sum(card.collisions.values())}</td></tr>"
    )
    page.add("<table>\n" + "\n".join(rows) + "\n</table>")
    if card.oracle is not None:
        o = card.oracle
        verdict = "no data" if o.ratio is None else f"{o.ratio:.3f}, " + (
            "met" if o.met else "missed")
        page.add(f"<p>{html.escape(o.target.label)} over all runs (limit "
                 f"{o.target.limit:.2f}, {o.n} runs): {verdict}</p>")
    page.figure(plots.target_ratios(card), "targets", "Targets: ratio per scenario and "
                "over all runs; dashed line: the limit")


def _ranked_classes(values: Mapping[str, float | None], lower_is_better: bool) -> dict[str, str]:
    """controller -> "best" / "worst" / "" for one column (ties share the mark)."""
    present = {k: v for k, v in values.items() if v is not None}
    if len(present) < 2 or len(set(present.values())) < 2:
        return dict.fromkeys(values, "")
    best = min(present.values()) if lower_is_better else max(present.values())
    worst = max(present.values()) if lower_is_better else min(present.values())
    return {
        k: "best" if v == best else "worst" if v == worst else ""
        for k, v in ((k, present.get(k)) for k in values)
    }


def _table(by_ctrl: Mapping[str, Sequence[RunKpis]]) -> str:
    stats = {
        ctrl: {c.field: kpi_stat(runs, c.field) for c in COLUMNS}
        for ctrl, runs in by_ctrl.items()
    }
    baseline = by_ctrl.get(BASELINE)
    ratios = {ctrl: delay_ratio(runs, baseline) for ctrl, runs in by_ctrl.items()}
    marks = {
        c.field: _ranked_classes({k: s[c.field].mean for k, s in stats.items()}, c.lower_is_better)
        for c in COLUMNS
    }
    ratio_marks = _ranked_classes(ratios, True)
    head = "".join(
        f"<th>{html.escape(c.header)}"
        + (f"<br>[{html.escape(c.unit)}]" if c.unit else "")
        + "</th>"
        for c in COLUMNS
    )
    rows = [f"<tr><th>controller</th><th>seeds</th>{head}<th>vs fixed</th></tr>"]
    for ctrl, runs in by_ctrl.items():
        cells = [f'<td class="name">{html.escape(ctrl)}</td><td>{len(runs)}</td>']
        for c in COLUMNS:
            cls = marks[c.field][ctrl]
            text = html.escape(stats[ctrl][c.field].format(c.decimals))
            cells.append(f'<td class="{cls}">{text}</td>' if cls else f"<td>{text}</td>")
        ratio = ratios[ctrl]
        text = "-" if ratio is None else f"{ratio:.2f}"
        cls = ratio_marks[ctrl]
        cells.append(f'<td class="{cls}">{text}</td>' if cls else f"<td>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def _losses_vs_fixed(by_ctrl: Mapping[str, Sequence[RunKpis]]) -> str:
    """Every KPI on which a controller is worse than fixed time, with the change."""
    baseline = by_ctrl.get(BASELINE)
    if not baseline:
        return (
            '<p class="note">No <code>fixed</code> controller in this scenario: '
            "no comparison with the fixed-time baseline.</p>"
        )
    items: list[str] = []
    for ctrl, runs in by_ctrl.items():
        if ctrl == BASELINE:
            continue
        worse: list[str] = []
        own, base = on_shared_seeds(runs, baseline)
        for c in COLUMNS:
            mine, ref = kpi_stat(own, c.field), kpi_stat(base, c.field)
            if mine.mean is None or ref.mean is None or mine.mean == ref.mean:
                continue
            if (mine.mean > ref.mean) != c.lower_is_better:
                continue
            spread = max(mine.std or 0.0, ref.std or 0.0)
            within = " (within the seed spread)" if abs(mine.mean - ref.mean) <= spread else ""
            change = (
                f"{(mine.mean - ref.mean) / abs(ref.mean):+.0%}" if ref.mean else
                f"{mine.mean - ref.mean:+.{c.decimals}f}"
            )
            worse.append(
                f"{html.escape(c.header)} {mine.mean:.{c.decimals}f} vs "
                f"{ref.mean:.{c.decimals}f} ({change}){within}"
            )
        verdict = "; ".join(worse) if worse else "none: not worse than fixed time on any KPI"
        items.append(f"<li><b>{html.escape(ctrl)}</b> worse than fixed on: {verdict}</li>")
    if not items:
        return ""
    return "<p>Where each controller loses against fixed time:</p><ul>" + "".join(items) + "</ul>"


def _warnings(runs: Sequence[RunKpis]) -> str:
    lines: list[str] = []
    for r in runs:
        issues = [
            f"{n} {label}"
            for n, label in (
                (r.collisions, "collisions"),
                (r.emergency_stops, "emergency stops"),
                (r.teleports, "teleports"),
                (r.person_teleports, "person teleports"),
                (r.trips_incomplete, "trips incomplete at the end"),
                (r.insertion_backlog, "vehicles never inserted (queue beyond the network)"),
            )
            if n
        ]
        if issues:
            what = html.escape(", ".join(issues))
            lines.append(f"<li>{html.escape(r.controller)} seed {r.seed}: {what}</li>")
    if not lines:
        return ""
    return '<div class="warn">Check these runs:<ul>' + "".join(lines) + "</ul></div>"


def _mean_queues(
    runs: Sequence[RunKpis], notes: list[str]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Queue series per approach averaged over seeds on the first seed's time grid."""
    per_seed: list[dict[str, tuple[np.ndarray, np.ndarray]]] = []
    for r in runs:
        path = Path(r.run_dir) / QUEUES_FILE
        if not path.exists():
            notes.append(f"{r.controller} seed {r.seed}: no {QUEUES_FILE} in {r.run_dir}")
            continue
        try:
            per_seed.append(read_queues(path))
        except ConfigError as exc:
            notes.append(str(exc))
    if not per_seed:
        return {}
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for approach, (t, q) in per_seed[0].items():
        samples = [q] + [
            np.interp(t, *seed[approach]) for seed in per_seed[1:] if approach in seed
        ]
        out[approach] = (t, np.mean(samples, axis=0))
    return out


def _signal_rows(
    link_groups: Mapping[int, str] | None, group_order: Sequence[str] | None, n_links: int
) -> list[tuple[str, int]]:
    if not link_groups:
        return [(f"link {i}", i) for i in range(n_links)]
    first: dict[str, int] = {}
    for link, group in sorted(link_groups.items()):
        first.setdefault(group, link)
    order = [g for g in (group_order or ()) if g in first]
    order += sorted(g for g in first if g not in order)
    return [(g, first[g]) for g in order if first[g] < n_links]


def _timing_window(
    times: np.ndarray, states: Sequence[str], rows: Sequence[tuple[str, int]],
    start: float, cycles: int,
) -> tuple[float, float]:
    """Start at the first green onset after ``start``; length = cycles x median cycle.

    The window is clipped to the recorded states: drawing beyond them would
    show the last state as if it had held on.
    """
    step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
    data_end = float(times[-1]) + step
    if start >= data_end:
        start = float(times[0])
    t0, t1 = start, start + cycles * _DEFAULT_WINDOW_CYCLE_S
    for _label, link in rows:
        onsets = [
            float(times[k]) for k in range(1, len(states))
            if times[k] >= start and link < len(states[k])
            and states[k][link] in "Gg" and states[k - 1][link] not in "Gg"
        ]
        if len(onsets) >= 2:
            t0 = onsets[0]
            t1 = t0 + cycles * float(np.median(np.diff(onsets)))
            break
    return t0, min(t1, data_end)


def _scenario_section(
    page: _Page,
    scenario: str,
    by_ctrl: Mapping[str, Sequence[RunKpis]],
    *,
    link_groups: Mapping[int, str] | None,
    group_order: Sequence[str] | None,
    cycles_to_show: int,
) -> None:
    slug = _slug(scenario)
    all_runs = [r for runs in by_ctrl.values() for r in runs]
    seeds = sorted({r.seed for r in all_runs})
    first = all_runs[0]
    page.add(f'<h2 id="{html.escape(slug)}">Scenario {html.escape(scenario)}</h2>')
    page.add(
        f"<p>{len(by_ctrl)} controller(s), seeds {html.escape(', '.join(map(str, seeds)))}; "
        f"measured window {first.warmup_s:.0f}-{first.end_s:.0f} s "
        f"(warm-up {first.warmup_s:.0f} s excluded).</p>"
    )
    page.add(_table(by_ctrl))
    page.add(_losses_vs_fixed(by_ctrl))
    page.add(_warnings(all_runs))
    notes: list[str] = []

    mode_stats = {
        ctrl: {mode: kpi_stat(runs, f) for mode, f in _MODE_FIELDS.items()}
        for ctrl, runs in by_ctrl.items()
    }
    page.figure(
        plots.delay_by_mode(mode_stats), f"{slug}_delay_by_mode",
        "Mean delay by mode per controller; error bar: standard deviation over seeds.",
    )
    stops = {c: kpi_stat(r, "stops_per_vehicle") for c, r in by_ctrl.items()}
    co2 = {c: kpi_stat(r, "co2_kg") for c, r in by_ctrl.items()}
    page.figure(
        plots.bars_with_error([("stops per vehicle", stops), ("CO2 [kg]", co2)]),
        f"{slug}_stops_co2",
        "Stops per vehicle and CO2 of all vehicles in the measured window.",
    )

    queues = {ctrl: _mean_queues(runs, notes) for ctrl, runs in by_ctrl.items()}
    queues = {ctrl: q for ctrl, q in queues.items() if q}
    if queues:
        page.figure(
            plots.queues_over_time(queues, warmup_s=first.warmup_s), f"{slug}_queues",
            "Queue length per approach (mean over seeds).",
        )

    losses: dict[str, dict[str, list[float]]] = {}
    for ctrl, runs in by_ctrl.items():
        pooled: dict[str, list[float]] = {"vehicle": [], "pedestrian": []}
        for r in runs:
            try:
                got = read_time_losses(
                    Path(r.run_dir), warmup_s=r.warmup_s, end_s=r.end_s, strict=False
                )
            except ConfigError as exc:
                notes.append(str(exc))
                continue
            for kind, values in pooled.items():
                values.extend(got[kind])
        if any(pooled.values()):
            losses[ctrl] = pooled
    if losses:
        page.figure(
            plots.delay_ecdf(losses), f"{slug}_delay_ecdf",
            "Distribution of per-trip delay, all seeds pooled.",
        )

    for ctrl, runs in by_ctrl.items():
        r = runs[0]
        path = Path(r.run_dir) / TLS_STATES_FILE
        if not path.exists():
            notes.append(f"{ctrl} seed {r.seed}: no {TLS_STATES_FILE} in {r.run_dir}")
            continue
        try:
            times, states = read_tls_states(path)
        except ConfigError as exc:
            notes.append(str(exc))
            continue
        if not states:
            notes.append(f"{ctrl} seed {r.seed}: {TLS_STATES_FILE} is empty")
            continue
        rows = _signal_rows(link_groups, group_order, len(states[0]))
        t0, t1 = _timing_window(times, states, rows, r.warmup_s, cycles_to_show)
        page.figure(
            plots.signal_timing(
                times, states, rows, t_start=t0, t_end=t1,
                title=f"Signalzeitenplan: {ctrl} (seed {r.seed})",
            ),
            f"{slug}_signals_{_slug(ctrl)}",
            f"Signal timing diagram of {ctrl}, seed {r.seed}, {cycles_to_show} cycle(s) "
            "after the warm-up.",
        )
    if notes:
        page.add(
            '<div class="note">Some plots are incomplete:<ul>'
            + "".join(f"<li>{html.escape(n)}</li>" for n in notes)
            + "</ul></div>"
        )


def write_report(
    out_dir: Path,
    records: Sequence[RunKpis],
    *,
    title: str,
    link_groups: Mapping[int, str] | None = None,
    group_order: Sequence[str] | None = None,
    cycles_to_show: int = 3,
    scorecard: Scorecard | None = None,
) -> Path:
    """Write ``out_dir/report.html`` (self-contained) and ``out_dir/plots/*.png``.

    ``link_groups`` maps a SUMO link index of the traffic light to its signal
    group id; the timing diagram then has one row per group (the state of the
    group's first link) in ``group_order``, else one row per link index.  With
    ``scorecard`` the page opens with the targets met and missed (``sim.scorecard``).
    """
    if not records:
        raise ConfigError("no KPI records to report", out_dir)
    if cycles_to_show < 1:
        raise ConfigError(f"cycles_to_show must be >= 1, got {cycles_to_show}", out_dir)
    out_dir = Path(out_dir)
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    page = _Page(plot_dir)
    grouped = group_records(records)
    page.add(f"<h1>{html.escape(title)}</h1>")
    toc = "".join(
        f'<li><a href="#{html.escape(_slug(s))}">{html.escape(s)}</a></li>' for s in grouped
    )
    if scorecard is not None:
        toc = '<li><a href="#targets">Targets</a></li>' + toc
    page.add(f'<ul>{toc}<li><a href="#how-to-read">How to read this</a></li></ul>')
    if scorecard is not None:
        _targets_section(page, scorecard)
    for scenario, by_ctrl in grouped.items():
        _scenario_section(
            page, scenario, by_ctrl,
            link_groups=link_groups, group_order=group_order, cycles_to_show=cycles_to_show,
        )
    page.add(_HOW_TO_READ)
    doc = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(p for p in page.parts if p)
        + "\n</body></html>\n"
    )
    path = out_dir / "report.html"
    path.write_text(doc, encoding="utf-8")
    return path
