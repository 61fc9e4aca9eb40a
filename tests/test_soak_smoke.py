"""A very short run of bench/soak.py, and the field's detector-outage switch it relies on.

The smoke run: 240 simulated seconds of `atsc field` at speed 8 with `atsc serve` on a
private mosquitto, one broker SIGKILL + restart and one garbage burst.  It checks what
the soak's figures are for (zero unsafe states, the service survives garbage and counts
it by reason, it reconnects after the broker restart), not timings.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from controller.errors import ConfigError
from sim.field_mqtt import Silence, parse_silence

REPO = Path(__file__).resolve().parent.parent


# -- ATSC_FIELD_SILENCE (sim/field_mqtt.py) ----------------------------------------------------


def test_parse_silence() -> None:
    assert parse_silence("") == ()
    assert parse_silence(" N1_sl, N2_q @600-900 ; E1_q@1000.5-1100") == (
        Silence(frozenset({"N1_sl", "N2_q"}), 600.0, 900.0),
        Silence(frozenset({"E1_q"}), 1000.5, 1100.0),
    )


@pytest.mark.parametrize("spec", ["N1_sl", "N1_sl@600", "@1-2", "N1_sl@9-3", "N1_sl@a-b"])
def test_parse_silence_refuses_bad_specs(spec: str) -> None:
    with pytest.raises(ConfigError, match="ATSC_FIELD_SILENCE"):
        parse_silence(spec)


def test_silenced_detectors_publish_nothing_in_their_window() -> None:
    from controller.messages import DetectorReading
    from sim.drivers import DriverContext
    from sim.field_mqtt import BrokerConfig, FieldSettings, HilDriver, LinkStats, Outgoing
    from sim.junction import load_junction
    from sim.runner import case_from_scenario, fixed_time_plan

    class Link:
        def __init__(self) -> None:
            self.stats = LinkStats()
            self.sent: list[Outgoing] = []

        def start(self) -> None: ...
        def send(self, messages: Any) -> None:
            self.sent.extend(messages)

        def receive(self) -> list[Any]:
            return []

        def stop(self, timeout: float = 5.0) -> None: ...

    model = load_junction("schlosskreuzung")
    fallback = fixed_time_plan(case_from_scenario("midday"), model, ())[1]
    ctx = DriverContext(model=model, fixed_program=fallback,
                        sequence=tuple(s.id for s in model.signals.stages), run_dir="", seed=1)
    silence = parse_silence("N1_sl,S1_q@3-5")
    settings = FieldSettings(BrokerConfig("127.0.0.1", 1), "schlosskreuzung", float("inf"),
                             silence=silence)
    with pytest.raises(ConfigError, match="unknown detector"):
        HilDriver(ctx, FieldSettings(BrokerConfig("127.0.0.1", 1), "schlosskreuzung", 1.0,
                                     silence=parse_silence("NOPE@1-2")), link=Link())
    link = Link()
    driver = HilDriver(ctx, settings, link=link)
    per_second: list[set[str]] = []
    for t in range(1, 8):
        readings = [DetectorReading(d.id, float(t), t, count=0) for d in model.detectors]
        before = len(link.sent)
        driver.step(float(t), readings)
        per_second.append({m.topic.rsplit("/", 1)[1] for m in link.sent[before:]
                           if m.kind == "det"})
    everyone = {d.id for d in model.detectors}
    assert per_second[:2] == [everyone] * 2  # t = 1, 2
    assert per_second[2:4] == [everyone - {"N1_sl", "S1_q"}] * 2  # t = 3, 4
    assert per_second[4:] == [everyone] * 3  # end exclusive
    assert driver.summary()["silence"] == {
        "windows": [{"detectors": ["N1_sl", "S1_q"], "begin_s": 3.0, "end_s": 5.0}],
        "readings_withheld": 4,
    }


# -- the smoke soak ----------------------------------------------------------------------------


def run_soak(
    tmp_path: Path, *, sim_s: int, speed: int, faults: str, timeout: int, margin: float = 0.03
) -> tuple[dict[str, Any], dict[str, Any], dict[str, dict[str, Any]]]:
    """Run bench/soak.py with the analytic evaluator; its report, figures and fault rows."""
    out = tmp_path / "soak"
    cmd = [sys.executable, str(REPO / "bench" / "soak.py"), "--sim-s", str(sim_s),
           "--speed", str(speed), "--faults", faults, "--evaluator", "analytic",
           "--margin", f"{margin:g}", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report: dict[str, Any] = json.loads((out / "soak.json").read_text())
    return report, report["figures"], {r["fault"]: r for r in report["fault_table"]}


@pytest.mark.mosquitto
@pytest.mark.sumo
@pytest.mark.slow
def test_soak_smoke(tmp_path: Path) -> None:
    report, fig, rows = run_soak(tmp_path, sim_s=240, speed=8, faults="broker1,garbage",
                                 timeout=150)

    assert fig["unsafe_states"] == 0 and fig["field_exit_code"] == 0
    assert fig["service_crashes_from_input"] == 0
    # One instance, alive until the script's clean SIGTERM at the end.
    assert fig["service_exit_codes"] == [[1, "SIGTERM", 0]]

    garbage = rows["garbage burst on detector topics"]
    assert "service alive" in garbage["what"]
    delta = garbage["detail"]["rejected_delta"]
    for reason in ("malformed_json", "oversized", "unknown_detector", "bad_topic", "schema",
                   "out_of_range", "replay", "future_timestamp", "stale_timestamp"):
        assert delta.get(reason, 0) > 0, (reason, delta)

    broker = rows["broker SIGKILL + restart (broker1)"]
    assert broker["recover_s"] is not None, broker["what"]
    assert fig["mqtt_reconnects"] >= 1 and fig["field_connects"] >= 2
    assert fig["fallback_checks_ok"], report["fallback_checks"]


@pytest.mark.mosquitto
@pytest.mark.sumo
@pytest.mark.slow
def test_detector_outage_and_service_crash_hand_the_junction_to_its_fallback(
    tmp_path: Path,
) -> None:
    """D2: silent detectors stop adaptation (no plan while they are faulty; the lease lapses);
    D3: a SIGKILLed service leaves the field on its own program within the lease.

    Margin 0: after the outage the service must put the field back on its plans before the
    kill, or there is no plan for D3 to leave (with the ops margin it may keep the fallback).
    """
    report, fig, rows = run_soak(tmp_path, sim_s=720, speed=6, faults="outage,crash",
                                 timeout=420, margin=0.0)
    assert fig["unsafe_states"] == 0 and fig["field_exit_code"] == 0
    assert fig["service_crashes_from_input"] == 0

    # The run must have been adapting before the faults, or it proves nothing.
    assert fig["plans_pushed"] > 0 and fig["field_plans"]["accepted"] > 0, fig["field_plans"]
    outage = rows["detector outage (north approach)"]
    assert outage["detail"]["plans_during"] == [], outage["what"]
    # The service announced "degraded" and the field went back to its own program at its
    # next switch point, well before the lease would have run out.
    assert outage["detail"]["fallback"] is not None, outage["what"]
    assert outage["detail"]["fallback"]["reason"] == "service degraded", outage["what"]

    crash = rows["service SIGKILL + restart"]
    assert crash["detail"]["field_in_fallback_at_kill"] is False, crash["what"]
    fallback = crash["detail"]["fallback"]
    assert fallback is not None and fallback["reason"] == "service offline", crash["what"]
    # Every fallback entry and exit followed a rule (lease, service offline, rejected plan).
    assert fig["fallback_checks_ok"], report["fallback_checks"]
