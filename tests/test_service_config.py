"""Service configuration: strict validation, exit code 2 with a message that names the key."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from test_service_harness import ATSC, JUNCTION_DIR, service_config

from controller.errors import ConfigError
from controller.service.config import EXAMPLE_CONFIG, load_config
from controller.service.mqtt import tls_context

pytestmark = pytest.mark.timeout(60)


def _serve(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ATSC), "serve", "--config", str(config), *extra],
                          capture_output=True, text=True, timeout=60, check=False)


def _edit(tmp_path: Path, old: str, new: str) -> Path:
    path = service_config(tmp_path / "svc.toml")
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))
    return path


def test_unknown_key_stops_start_up_with_exit_2_naming_section_and_key(tmp_path: Path) -> None:
    path = _edit(tmp_path, 'host = "127.0.0.1"', 'host = "127.0.0.1"\nhots = "x"')
    result = _serve(path)
    assert result.returncode == 2, result.stderr
    assert "[mqtt]" in result.stderr and "'hots'" in result.stderr
    assert "known keys" in result.stderr and "host" in result.stderr
    # One line for the operator, no traceback.
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_value_stops_start_up_with_exit_2_saying_what_to_fix(tmp_path: Path) -> None:
    path = _edit(tmp_path, "max_age_s = 30.0", 'max_age_s = "thirty"')
    result = _serve(path)
    assert result.returncode == 2
    assert "[detectors] max_age_s" in result.stderr and "must be a number" in result.stderr


def test_unknown_section_and_bad_broker_override_exit_2(tmp_path: Path) -> None:
    path = service_config(tmp_path / "svc.toml")
    path.write_text(path.read_text() + "\n[mqqt]\nhost = 'x'\n")
    result = _serve(path)
    assert result.returncode == 2 and "'mqqt'" in result.stderr
    ok = service_config(tmp_path / "ok.toml")
    result = _serve(ok, "--broker", "localhost")
    assert result.returncode == 2 and "--broker" in result.stderr and "HOST:PORT" in result.stderr


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("port = 1\n", "port = 70000\n", "[mqtt] port: must be an integer within 1..65535"),
        ("port = 1\n", "port = true\n", "[mqtt] port: must be an integer"),
        ('evaluator = "analytic"', 'evaluator = "fast"', "[twin] evaluator: must be one of"),
        ("adaptive = true", 'adaptive = "yes"', "[controller] adaptive: must be true or false"),
        ("adaptive = true", "adaptive = true\npedestrian_slack_s = -1",
         "[controller] pedestrian_slack_s: must be a number at least 0.0"),
        ("reconnect_max_s = 1.0", "reconnect_max_s = 0.1", "reconnect_max_s 0.1 is below"),
        (f'path = "{JUNCTION_DIR}"', 'path = "nowhere"', "[junction] path: no junction.toml"),
        ('name = "schlosskreuzung"', 'name = "a/b"', "[junction] name: 'a/b' must match"),
        ("greens_s = [40, 12, 26, 10]", "greens_s = [40, 12, 26]", "3 values for 4 stages"),
        ("greens_s = [40, 12, 26, 10]", "greens_s = [40, 12, 3, 10]",
         "fails the safety validator"),
        ("keepalive_s = 10", 'keepalive_s = 10\npassword_credential = "mqtt-password"',
         "needs $CREDENTIALS_DIRECTORY"),
        ("keepalive_s = 10", 'keepalive_s = 10\npassword_file = "secret"',
         "password_file: file"),
        ("[detectors]", "[detectors]\nmax_payload_bytes = 4096",
         "[detectors] max_payload_bytes: must be an integer within 64..1024"),
    ],
)
def test_each_bad_value_names_its_key(tmp_path: Path, old: str, new: str, message: str) -> None:
    from controller.service.app import load_fallback
    from sim.junction import load_junction

    path = _edit(tmp_path, old, new)
    with pytest.raises(ConfigError) as err:
        cfg = load_config(path)
        load_fallback(cfg, load_junction(cfg.junction.path).signals)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_credentials_resolve_in_the_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text("s3cret\n")
    (creds / "mqtt-ca.crt").write_text("not parsed here\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    path = _edit(tmp_path, "keepalive_s = 10", 'keepalive_s = 10\nusername = "service-x"\n'
                 'password_credential = "mqtt-password"\n[mqtt.tls]\nca_credential = "mqtt-ca.crt"')
    cfg = load_config(path)
    assert cfg.mqtt.password() == "s3cret"
    assert cfg.mqtt.tls is not None and cfg.mqtt.tls.ca_file == creds / "mqtt-ca.crt"
    # A CA file that is no certificate stops start-up naming the section (no retry loop
    # blaming the broker).
    with pytest.raises(ConfigError, match=r"\[mqtt.tls\] cannot use ca_file"):
        tls_context(cfg.mqtt)
    # A credential the unit does not load is named, with the fix.
    (creds / "mqtt-ca.crt").unlink()
    with pytest.raises(ConfigError, match=r"\[mqtt.tls\] ca_credential: credential 'mqtt-ca.crt'"):
        load_config(path)


def test_relative_paths_follow_the_config_file_and_overrides_apply(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    path = _edit(tmp_path, f'path = "{JUNCTION_DIR}"',
                 f'path = "{Path("..") / JUNCTION_DIR.relative_to(JUNCTION_DIR.parents[1])}"')
    moved = tmp_path / "etc" / "svc.toml"
    path.rename(moved)
    repo = JUNCTION_DIR.parents[1]
    (tmp_path / "scenarios").symlink_to(repo / "scenarios")
    cfg = load_config(moved).with_overrides(broker="10.0.0.5:8883", metrics_port=9200)
    assert cfg.junction.path == (tmp_path / "scenarios" / "schlosskreuzung").resolve()
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.metrics.port) == ("10.0.0.5", 8883, 9200)


def test_the_example_config_loads_and_its_fallback_passes_the_validator() -> None:
    from controller.service.app import load_fallback
    from sim.junction import load_junction

    cfg = load_config(None)
    assert cfg.source == EXAMPLE_CONFIG.resolve()
    assert cfg.junction.name == "schlosskreuzung" and cfg.twin.evaluator == "sumo"
    assert (cfg.mqtt.host, cfg.mqtt.port) == ("127.0.0.1", 1883)
    program = load_fallback(cfg, load_junction(cfg.junction.path).signals)
    assert program.id == "fallback-schlosskreuzung"


def test_the_service_decides_like_the_evaluated_core_unless_configured_otherwise(
    tmp_path: Path,
) -> None:
    """The defaults of [controller] are the ``AdaptiveConfig`` the benchmarks measured."""
    from dataclasses import fields

    from controller.adaptive import AdaptiveConfig
    from controller.service.config import ControllerSection

    core = AdaptiveConfig()
    shared = [f.name for f in fields(ControllerSection) if hasattr(core, f.name)]
    assert {"margin", "min_gain_s", "pedestrian_slack_s", "lease_cycles"} <= set(shared)
    for section in (ControllerSection(), load_config(None).controller):
        assert {k: getattr(section, k) for k in shared} == {k: getattr(core, k) for k in shared}
    assert load_config(None).controller.pedestrian_slack_s is None
    on = load_config(_edit(tmp_path, "adaptive = true",
                           "adaptive = true\npedestrian_floor = true"))
    assert on.controller.pedestrian_slack_s == 1.0
    slack = load_config(_edit(tmp_path, "adaptive = true", "adaptive = true\n"
                              "pedestrian_floor = true\npedestrian_slack_s = 2.5"))
    assert slack.controller.pedestrian_slack_s == 2.5


def test_twin_pedestrian_weight_defaults_to_the_twin_and_is_checked(tmp_path: Path) -> None:
    from controller.service.config import TwinSection
    from controller.twin import TwinConfig

    default = TwinConfig.__dataclass_fields__["pedestrian_weight"].default
    assert TwinSection().pedestrian_weight == load_config(None).twin.pedestrian_weight == default
    five = load_config(_edit(tmp_path, "timeout_s = 20.0", "timeout_s = 20.0\n"
                             "pedestrian_weight = 5"))
    assert five.twin.pedestrian_weight == 5.0
    with pytest.raises(ConfigError, match=r"\[twin\] pedestrian_weight: must be a number above 0"):
        load_config(_edit(tmp_path, "timeout_s = 20.0", "timeout_s = 20.0\n"
                          "pedestrian_weight = 0"))


def test_twin_drivers_default_to_the_twin_and_are_checked(tmp_path: Path) -> None:
    from controller.twin import TwinConfig

    fields = TwinConfig.__dataclass_fields__
    default = load_config(None).twin
    assert (default.startup_delay_s, default.car_accel_mps2) == (
        fields["startup_delay_s"].default, fields["car_accel_mps2"].default)
    site = load_config(_edit(tmp_path, "timeout_s = 20.0", "timeout_s = 20.0\n"
                             "startup_delay_s = 0.9\ncar_accel_mps2 = 1.8"))
    assert (site.twin.startup_delay_s, site.twin.car_accel_mps2) == (0.9, 1.8)
    with pytest.raises(ConfigError, match=r"\[twin\] car_accel_mps2: must be a number above 0"):
        load_config(_edit(tmp_path, "timeout_s = 20.0", "timeout_s = 20.0\ncar_accel_mps2 = 0"))
    with pytest.raises(ConfigError, match=r"\[twin\] startup_delay_s: must be a number at least"):
        load_config(_edit(tmp_path, "timeout_s = 20.0", "timeout_s = 20.0\nstartup_delay_s = -1"))


def test_fallback_from_a_program_file(tmp_path: Path) -> None:
    import json

    from test_service_harness import fallback_program

    from controller.service.app import load_fallback
    from sim.junction import load_junction

    (tmp_path / "fb.json").write_text(json.dumps(fallback_program().to_json()))
    path = service_config(tmp_path / "svc.toml")
    text = path.read_text()
    start, end = text.index("[fallback]"), text.index("[mqtt]")
    path.write_text(text[:start] + '[fallback]\nprogram_file = "fb.json"\n\n' + text[end:])
    cfg = load_config(path)
    program = load_fallback(cfg, load_junction(cfg.junction.path).signals)
    assert program == fallback_program()
    (tmp_path / "fb.json").write_text('{"id": "x", "cycle_s": 500, "offset_s": 0, "greens": {}}')
    with pytest.raises(ConfigError, match="out_of_range"):
        load_fallback(load_config(path), load_junction(cfg.junction.path).signals)


@pytest.mark.sumo
def test_the_service_twin_ranks_with_the_configured_pedestrian_weight(tmp_path: Path) -> None:
    from controller.service.app import build_parts, load_fallback
    from controller.twin import SumoTwin
    from sim.junction import load_junction

    cfg = load_config(_edit(tmp_path, 'evaluator = "analytic"', 'evaluator = "sumo"\n'
                            "pedestrian_weight = 3\nstartup_delay_s = 0.9"))
    model = load_junction(cfg.junction.path)
    parts = build_parts(cfg, model, load_fallback(cfg, model.signals), 1)
    try:
        assert isinstance(parts.evaluator, SumoTwin)
        assert parts.evaluator.config.pedestrian_weight == 3.0
        assert parts.evaluator.config.startup_delay_s == 0.9
    finally:
        parts.close()
