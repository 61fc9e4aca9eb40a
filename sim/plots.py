"""Figures for the engineer's report (matplotlib, Agg, no pyplot).

Every function takes plain data (numbers, arrays, :class:`sim.kpis.Stat`) and
returns a ``matplotlib.figure.Figure``; :func:`figure_png` renders it.  Figures
are built without ``pyplot`` so that nothing depends on a global backend or a
display, and figures are freed as soon as they are rendered.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from sim.kpis import Stat
from sim.scorecard import Score, Scorecard

#: Colours of SUMO state characters in the Signalzeitenplan.  Minor green
#: ``g`` (conditionally compatible, yields) is a lighter green so that an
#: engineer sees at once which movements do not have protected green.
STATE_COLOURS: Mapping[str, str] = {
    "G": "#1a9641",
    "g": "#7fcf7f",
    "y": "#f5c400",
    "Y": "#f5c400",
    "u": "#f08c00",
    "r": "#d7191c",
    "R": "#d7191c",
    "s": "#a50f15",
    "o": "#bdbdbd",
    "O": "#bdbdbd",
}
STATE_NAMES: Mapping[str, str] = {
    "G": "green",
    "g": "green (yields)",
    "y": "yellow",
    "u": "red-yellow",
    "r": "red",
    "o": "off",
}


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """Render a figure as PNG bytes (without the matplotlib URL in the metadata)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def _new(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def delay_by_mode(stats: Mapping[str, Mapping[str, Stat]], title: str = "") -> Figure:
    """Grouped bars: mean delay per mode (x) and controller (bar), error bar = std over seeds.

    ``stats[controller][mode]``.  A mode without trips has no bar and is marked
    "n/a", so a missing bar never reads as zero delay.
    """
    controllers = list(stats)
    modes = list(dict.fromkeys(m for by_mode in stats.values() for m in by_mode))
    fig = _new(max(6.0, 1.3 * len(modes) + 2), 3.6)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(controllers))
    x = np.arange(len(modes), dtype=float)
    for i, ctrl in enumerate(controllers):
        xs = x - 0.4 + width * (i + 0.5)
        for j, mode in enumerate(modes):
            st = stats[ctrl].get(mode)
            if st is None or st.mean is None:
                ax.text(xs[j], 0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
                continue
            ax.bar(xs[j], st.mean, width, yerr=st.std, capsize=3, color=f"C{i}")
    handles = [Patch(color=f"C{i}", label=c) for i, c in enumerate(controllers)]
    ax.legend(handles=handles, fontsize=8, ncols=min(4, max(1, len(controllers))))
    ax.set_xticks(x, modes)
    ax.set_ylabel("mean delay (timeLoss) [s]")
    ax.set_title(title or "Delay by mode (error bar: std over seeds)")
    ax.grid(axis="y", alpha=0.3)
    return fig


def bars_with_error(
    panels: Sequence[tuple[str, Mapping[str, Stat]]], title: str = ""
) -> Figure:
    """One panel per KPI (e.g. stops, CO2), one bar per controller, std as error bar."""
    fig = _new(4.0 * max(1, len(panels)), 3.4)
    axes = fig.subplots(1, max(1, len(panels)), squeeze=False)[0]
    for ax, (label, by_ctrl) in zip(axes, panels, strict=False):
        names = list(by_ctrl)
        for i, ctrl in enumerate(names):
            st = by_ctrl[ctrl]
            if st.mean is None:
                ax.text(i, 0, "n/a", ha="center", va="bottom", fontsize=8)
                continue
            ax.bar(i, st.mean, 0.6, yerr=st.std, capsize=3, color=f"C{i}")
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


def queues_over_time(
    series: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
    *,
    warmup_s: float | None = None,
    title: str = "",
) -> Figure:
    """One panel per approach, one line per controller: queue length [m] over time.

    ``series[controller][approach] = (times_s, queue_m)``.  The warm-up is
    shaded: it is not part of the KPIs.
    """
    approaches = sorted({a for by_app in series.values() for a in by_app})
    n = max(1, len(approaches))
    ncols = 1 if n == 1 else 2
    nrows = math.ceil(n / ncols)
    fig = _new(5.5 * ncols, 2.6 * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True).ravel()
    for ax, approach in zip(axes, approaches, strict=False):
        for i, (ctrl, by_app) in enumerate(series.items()):
            if approach in by_app:
                t, q = by_app[approach]
                ax.plot(t, q, color=f"C{i}", lw=1.0, label=ctrl)
        if warmup_s:
            ax.axvspan(0, warmup_s, color="0.85", zorder=0)
        ax.set_title(f"approach {approach}", fontsize=9)
        ax.set_ylabel("queue [m]")
        ax.grid(alpha=0.3)
    for ax in axes[len(approaches):]:
        ax.set_visible(False)
    for ax in axes[-ncols:]:
        ax.set_xlabel("simulation time [s]")
    if approaches:
        axes[0].legend(fontsize=8)
    fig.suptitle(title or "Queue length per approach (grey: warm-up, not counted)")
    return fig


def delay_ecdf(losses: Mapping[str, Mapping[str, Sequence[float]]], title: str = "") -> Figure:
    """Empirical CDF of per-trip timeLoss, one panel per kind, one line per controller.

    ``losses[controller][kind]`` with kinds such as ``vehicle`` and ``pedestrian``.
    """
    kinds = list(dict.fromkeys(k for by_kind in losses.values() for k in by_kind))
    fig = _new(4.8 * max(1, len(kinds)), 3.4)
    axes = fig.subplots(1, max(1, len(kinds)), squeeze=False)[0]
    for ax, kind in zip(axes, kinds, strict=False):
        for i, (ctrl, by_kind) in enumerate(losses.items()):
            values = np.sort(np.asarray(by_kind.get(kind, ()), dtype=float))
            if values.size == 0:
                continue
            frac = np.arange(1, values.size + 1) / values.size
            ax.step(values, frac, where="post", color=f"C{i}", label=f"{ctrl} (n={values.size})")
        ax.set_xlabel(f"{kind} delay (timeLoss) [s]")
        ax.set_ylabel("share of trips with at most this delay")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title or "Delay distribution (ECDF)")
    return fig


def _runs(times: np.ndarray, chars: Sequence[str], t_end: float) -> list[tuple[float, float, str]]:
    """Merge per-entry state chars into (start, duration, char) runs up to t_end."""
    out: list[tuple[float, float, str]] = []
    for k, ch in enumerate(chars):
        start = float(times[k])
        stop = float(times[k + 1]) if k + 1 < len(times) else t_end
        if out and out[-1][2] == ch and math.isclose(out[-1][0] + out[-1][1], start):
            s0, d0, _ = out[-1]
            out[-1] = (s0, d0 + stop - start, ch)
        else:
            out.append((start, stop - start, ch))
    return out


def signal_timing(
    times: np.ndarray,
    states: Sequence[str],
    rows: Sequence[tuple[str, int]],
    *,
    t_start: float,
    t_end: float,
    title: str = "",
) -> Figure:
    """Signalzeitenplan: one row per signal group, coloured bars of its state over time.

    ``times``/``states`` come from SUMO's SaveTLSStates output; ``rows`` are
    (label, link index) pairs, the link index being the one whose state
    character stands for the row (a signal group's first link).
    """
    # The entry in force at t_start may be older than t_start (entries hold
    # until the next one), so start from the last entry at or before it.
    first = max(0, int(np.searchsorted(times, t_start, side="right")) - 1)
    last = int(np.searchsorted(times, t_end, side="left"))
    idx = [int(k) for k in range(first, last)]
    shown = np.maximum(times[idx], t_start) if idx else np.zeros(0)
    fig = _new(10.0, 0.32 * max(1, len(rows)) + 1.4)
    ax = fig.add_subplot()
    seen: set[str] = set()
    for r, (_label, link) in enumerate(rows):
        chars = [states[k][link] if link < len(states[k]) else "o" for k in idx]
        for start, dur, ch in _runs(shown, chars, t_end):
            ax.broken_barh(
                [(start, dur)], (r - 0.35, 0.7), facecolors=STATE_COLOURS.get(ch, "#000000")
            )
            seen.add(ch)
    ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlim(t_start, t_end)
    ax.set_xlabel("simulation time [s]")
    ax.grid(axis="x", alpha=0.4)
    handles = [
        Patch(color=STATE_COLOURS[c], label=name) for c, name in STATE_NAMES.items() if c in seen
    ]
    if handles:
        fig.legend(handles=handles, fontsize=8, ncols=len(handles), loc="outside lower center",
                   frameon=False)
    ax.set_title(title or "Signal timing diagram (Signalzeitenplan)")
    return fig


def target_ratios(card: Scorecard) -> Figure:
    """One panel per target: the ratio per scenario and over all runs, limit as a line.

    Green bars meet the target, red ones miss it; the error bar is the 95 % CI of
    the per-seed ratios, so a miss inside the noise looks like one.  A scenario
    without data for a target shows "n/a" instead of a bar.
    """
    names = [*card.scenarios, "all runs"]
    fig = _new(max(7.0, 0.75 * len(names) + 2.5), 2.3 * max(1, len(card.targets)) + 0.6)
    axes = fig.subplots(max(1, len(card.targets)), 1, squeeze=False, sharex=True)[:, 0]
    for k, (ax, target) in enumerate(zip(axes, card.targets, strict=False)):
        scores: list[Score] = [sc[k] for sc in card.scenarios.values()] + [card.overall[k]]
        for i, s in enumerate(scores):
            if s.ratio is None:
                ax.text(i, 0.05, "n/a", ha="center", va="bottom", fontsize=7,
                        transform=ax.get_xaxis_transform())
                continue
            ax.bar(i, s.ratio, 0.65, yerr=s.half_width, capsize=3,
                   color="#1a9641" if s.met else "#d7191c", alpha=0.85)
        ax.axhline(target.limit, color="black", linestyle="--", linewidth=1)
        ax.axhline(1.0, color="grey", linewidth=0.6)
        ax.set_ylabel(f"{target.label}\n(limit {target.limit:.2f})", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xticks(range(len(names)), names, rotation=25, ha="right", fontsize=8)
    fig.suptitle(f"Targets of {card.controller}: ratio of mean delays "
                 "(green met, red missed; error bar 95 % CI)")
    return fig
