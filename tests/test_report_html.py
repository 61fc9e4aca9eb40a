"""The HTML report and its plots, built from real SUMO runs."""

from __future__ import annotations

import base64
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from _kpis_helpers import VTYPE_CLASSES, build_net, run_sumo, write_queues
from matplotlib.colors import to_hex

from controller.errors import ConfigError
from sim import plots
from sim.kpis import RunKpis, compute_kpis, read_tls_states
from sim.report import write_report

pytestmark = pytest.mark.sumo

WARMUP_S = 20.0
END_S = 240.0

#: A second "controller": the same phases as netgenerate's program with
#: longer greens, loaded after the net so that SUMO runs it.
LONG_PROGRAM = """<additional>
  <tlLogic id="B1" type="static" programID="long" offset="0">
    <phase duration="50" state="gGgrrrgGgrrrrGrG"/>
    <phase duration="5"  state="gGgrrrgGgrrrrrrr"/>
    <phase duration="3"  state="yyyrrryyyrrrrrrr"/>
    <phase duration="50" state="rrrgGgrrrgGgGrGr"/>
    <phase duration="5"  state="rrrgGgrrrgGgrrrr"/>
    <phase duration="3"  state="rrryyyrrryyyrrrr"/>
  </tlLogic>
</additional>
"""

#: Signal groups of the grid's traffic light: link index -> group id.
LINK_GROUPS = {
    **dict.fromkeys((0, 1, 2), "K1"), **dict.fromkeys((3, 4, 5), "K2"),
    **dict.fromkeys((6, 7, 8), "K3"), **dict.fromkeys((9, 10, 11), "K4"),
    12: "F1", 13: "F2", 14: "F3", 15: "F4",
}


def _record(run_dir: Path, scenario: str, controller: str, seed: int) -> RunKpis:
    return compute_kpis(
        run_dir, scenario=scenario, controller=controller, seed=seed, warmup_s=WARMUP_S,
        end_s=END_S, occupancy={"linienbus": 20.0}, vtype_classes=VTYPE_CLASSES,
    )


def _queues(run_dir: Path, seed: int) -> None:
    rows = [
        (float(t), a, float((t * (seed + i)) % 40), (t % 40) // 7)
        for t in range(0, 300) for i, a in enumerate(("N", "E", "S", "W"))
    ]
    write_queues(run_dir, rows)


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[RunKpis]:
    base = tmp_path_factory.mktemp("report_runs")
    net = build_net(base / "net")
    program = base / "long.add.xml"
    program.write_text(LONG_PROGRAM, encoding="utf-8")
    out: list[RunKpis] = []
    for ctrl, adds in (("fixed", ()), ("long-greens", (program,))):
        for seed in (1, 2):
            run_dir = run_sumo(net, base / f"peak_{ctrl}_{seed}", seed=seed, additional=adds)
            _queues(run_dir, seed)
            out.append(_record(run_dir, "peak", ctrl, seed))
    # A second scenario with a single controller and seed, and no queues.csv.
    run_dir = run_sumo(net, base / "offpeak", seed=3, end_s=260)
    out.append(_record(run_dir, "off-peak", "fixed", 3))
    return out


@pytest.fixture(scope="module")
def report(records: list[RunKpis], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report(
        tmp_path_factory.mktemp("report"), records, title="Grid test <report>",
        link_groups=LINK_GROUPS, group_order=["F1", "K1", "K2", "K3", "K4"],
    )


def test_report_is_self_contained(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', text)
    assert refs, "no images or links at all"
    assert all(r.startswith(("data:image/png;base64,", "#")) for r in refs), refs
    assert "http://" not in text and "https://" not in text
    assert "<script" not in text and "<link" not in text
    # The title is escaped, not injected.
    assert "Grid test &lt;report&gt;" in text


def test_every_plot_is_embedded_and_written(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    files = sorted((report.parent / "plots").glob("*.png"))
    # peak: delays, stops/CO2, queues, ECDF, 2 timing diagrams;
    # off-peak: delays, stops/CO2, ECDF, 1 timing diagram (no queues.csv).
    assert len(files) == len(embedded) == 10
    assert {base64.b64decode(e) for e in embedded} == {f.read_bytes() for f in files}
    assert all(f.read_bytes().startswith(b"\x89PNG") for f in files)
    names = {f.stem for f in files}
    assert {"peak_signals_fixed", "peak_signals_long-greens", "peak_queues"} <= names
    assert "off-peak_queues" not in names


def test_table_shows_means_ratios_and_losses(report: Path, records: list[RunKpis]) -> None:
    text = report.read_text(encoding="utf-8")
    peak = text[text.index("Scenario peak"): text.index("Scenario off-peak")]
    table = peak[peak.index("<table>"): peak.index("</table>")]
    def delays(ctrl: str) -> list[float]:
        out = [r.vehicle_delay_s for r in records if r.scenario == "peak" and r.controller == ctrl]
        assert len(out) == 2
        return [v for v in out if v is not None]

    fixed, long_ = delays("fixed"), delays("long-greens")
    mean_fixed = float(np.mean(fixed))
    mean_long = float(np.mean(long_))
    std_fixed = float(np.std(fixed, ddof=1))
    assert f"{mean_fixed:.1f} ± {std_fixed:.1f}" in table
    assert f">{mean_long / mean_fixed:.2f}<" in table
    assert 'class="best"' in table and 'class="worst"' in table
    assert "<th>insertion delay<br>[s]</th>" in table
    # The loser of vehicle delay is named in the losses list.
    loser_list = peak[peak.index("Where each controller loses"):]
    assert "<b>long-greens</b> worse than fixed on:" in loser_list
    if mean_long > mean_fixed:
        assert "vehicle delay" in loser_list.split("</li>")[0]
    assert text.index("Scenario peak") < text.index("Scenario off-peak")
    assert "How to read this" in text


def test_single_controller_without_fixed(records: list[RunKpis], tmp_path: Path) -> None:
    one = [r for r in records if r.controller == "long-greens"][:1]
    path = write_report(tmp_path, one, title="one run")
    text = path.read_text(encoding="utf-8")
    assert "No <code>fixed</code> controller" in text
    assert text.count("<tr>") == 2  # header + one controller
    # Without link groups the timing diagram has one row per link.
    assert (tmp_path / "plots" / "peak_signals_long-greens.png").exists()


def test_missing_run_files_become_notes(records: list[RunKpis], tmp_path: Path) -> None:
    src = Path(records[0].run_dir)
    moved = tmp_path / "copy"
    shutil.copytree(src, moved)
    (moved / "tls_states.xml").unlink()
    rec = replace(records[0], run_dir=str(moved))
    text = write_report(tmp_path / "out", [rec], title="t").read_text(encoding="utf-8")
    assert "no tls_states.xml" in text


def test_empty_records_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no KPI records"):
        write_report(tmp_path, [], title="x")


def test_signal_timing_bars_match_logged_states(records: list[RunKpis]) -> None:
    times, states = read_tls_states(Path(records[0].run_dir) / "tls_states.xml")
    link, t0, t1 = 1, 40.0, 160.0
    fig = plots.signal_timing(times, states, [("K1", link)], t_start=t0, t_end=t1)
    green = to_hex(plots.STATE_COLOURS["G"])
    drawn = 0.0
    for coll in fig.axes[0].collections:
        colour = to_hex(np.asarray(coll.get_facecolor(), dtype=float)[0].tolist())
        for path in coll.get_paths():
            xs = np.asarray(path.vertices)[:, 0]
            if colour == green:
                drawn += float(xs.max() - xs.min())
    # SUMO logs one state per second: count the seconds link 1 shows major green.
    logged = sum(1 for t, s in zip(times, states, strict=True) if t0 <= t < t1 and s[link] == "G")
    assert logged > 0
    assert drawn == pytest.approx(logged)
