"""The service configuration: one TOML file per junction, validated strictly.

Every key is checked at start-up: an unknown key (usually a typo that would
otherwise silently keep a default) or a bad value raises ``ConfigError``
naming the section, the key and what to write instead; the CLI turns that into
one line on stderr and exit code 2.  Reference: docs/service.md.

Secrets never sit in this file: the MQTT password and TLS files are named
either as paths (``password_file``, ``ca_file``, ...) or as systemd
credential names (``password_credential``, ``ca_credential``, ...) that are
resolved inside ``$CREDENTIALS_DIRECTORY`` (``LoadCredential=`` in the unit).
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, TypeVar

from controller.adaptive import PEDESTRIAN_SLACK_S, AdaptiveConfig
from controller.errors import ConfigError
from controller.twin import (
    DEFAULT_CAR_ACCEL_MPS2,
    DEFAULT_PEDESTRIAN_WEIGHT,
    DEFAULT_STARTUP_DELAY_S,
)
from controller.wire import ID_PATTERN, MAX_PAYLOAD_BYTES, TopicKind

#: The example configuration ``atsc serve`` uses without ``--config``.
EXAMPLE_CONFIG: Final = Path(__file__).resolve().parents[2] / "ops" / "schlosskreuzung.toml"

EVALUATORS: Final = ("sumo", "analytic")

T = TypeVar("T")


@dataclass(frozen=True)
class JunctionSection:
    name: str
    path: Path


@dataclass(frozen=True)
class FallbackSection:
    """The program stored in the signal controller hardware (the service must know it exactly).

    Either ``program_file`` (a program object as in ``plan.json``) or the stage
    form ``id``/``stages``/``greens_s``/``offset_s`` compiled against the junction.
    """

    program_file: Path | None = None
    id: str | None = None
    stages: tuple[str, ...] = ()
    greens_s: tuple[int, ...] = ()
    offset_s: int = 0


@dataclass(frozen=True)
class TlsSection:
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


@dataclass(frozen=True)
class MqttSection:
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = ""
    username: str | None = None
    #: Resolved path of the password file (from ``password_file`` or ``password_credential``).
    password_path: Path | None = None
    tls: TlsSection | None = None
    keepalive_s: int = 30
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    connect_timeout_s: float = 10.0

    def password(self) -> str | None:
        """Read the password when connecting, so a rotated credential needs no config change."""
        if self.password_path is None:
            return None
        try:
            return self.password_path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"[mqtt] cannot read the password: {exc}") from exc


@dataclass(frozen=True)
class MetricsSection:
    port: int = 9108
    bind: str = "127.0.0.1"


@dataclass(frozen=True)
class ControllerSection:
    """Maps onto ``controller.adaptive.AdaptiveConfig``; ``adaptive = false`` is shadow mode.

    The defaults are the core's own, so a file without a key runs what the benchmarks measured.
    """

    adaptive: bool = True
    margin: float = AdaptiveConfig.margin
    min_gain_s: float = AdaptiveConfig.min_gain_s
    #: ``pedestrian_slack_s`` when ``pedestrian_floor = true`` in the file, else None.
    pedestrian_slack_s: float | None = None
    lease_cycles: float = AdaptiveConfig.lease_cycles
    decision_lead_s: int = AdaptiveConfig.decision_lead_s
    max_state_age_s: float = AdaptiveConfig.max_state_age_s
    program_prefix: str = AdaptiveConfig.program_prefix


@dataclass(frozen=True)
class TwinSection:
    evaluator: str = "sumo"
    workers: int = 2
    horizon_s: int = 300
    #: One decision's twin evaluations must finish within this; otherwise nothing is pushed.
    timeout_s: float = 10.0
    #: Persons one pedestrian counts for in the twin's ranking (``TwinConfig.pedestrian_weight``).
    pedestrian_weight: float = DEFAULT_PEDESTRIAN_WEIGHT
    #: The twin's drivers, calibrated to the junction's measured queue discharge
    #: (``TwinConfig.startup_delay_s``, ``TwinConfig.car_accel_mps2``; docs/twin.md, "Drivers").
    startup_delay_s: float = DEFAULT_STARTUP_DELAY_S
    car_accel_mps2: float = DEFAULT_CAR_ACCEL_MPS2


@dataclass(frozen=True)
class DetectorsSection:
    max_age_s: float = 30.0
    max_future_s: float = 2.0
    max_payload_bytes: int = MAX_PAYLOAD_BYTES[TopicKind.DETECTOR]
    restart_max_seq: int = 16


@dataclass(frozen=True)
class ServiceConfig:
    source: Path
    junction: JunctionSection
    fallback: FallbackSection
    mqtt: MqttSection = field(default_factory=MqttSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    controller: ControllerSection = field(default_factory=ControllerSection)
    twin: TwinSection = field(default_factory=TwinSection)
    detectors: DetectorsSection = field(default_factory=DetectorsSection)

    def with_overrides(self, *, broker: str | None = None,
                       metrics_port: int | None = None) -> ServiceConfig:
        """Apply the command line's ``--broker HOST:PORT`` and ``--metrics-port``."""
        cfg = self
        if broker is not None:
            host, sep, port_text = broker.rpartition(":")
            if not sep or not host or not port_text.isdigit():
                raise ConfigError(f"--broker {broker!r}: expected HOST:PORT, e.g. 127.0.0.1:1883")
            port = int(port_text)
            if not 1 <= port <= 65535:
                raise ConfigError(f"--broker {broker!r}: port must be within 1..65535")
            cfg = replace(cfg, mqtt=replace(cfg.mqtt, host=host.strip("[]"), port=port))
        if metrics_port is not None:
            if not 0 <= metrics_port <= 65535:
                raise ConfigError(f"--metrics-port {metrics_port}: must be within 0..65535")
            cfg = replace(cfg, metrics=replace(cfg.metrics, port=metrics_port))
        return cfg


# -- reading one table strictly ---------------------------------------------------------


class _Table:
    """One TOML table; every key read is ticked off, leftovers are unknown keys."""

    def __init__(self, raw: object, where: str, path: Path) -> None:
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} must be a table", path)
        self.raw: dict[str, Any] = raw
        self.where = where
        self.path = path
        self.known: list[str] = []

    def _fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.where} {key}: {problem}", self.path)

    def get(self, key: str, parse: Callable[[str, Any], T], default: T) -> T:
        self.known.append(key)
        if key not in self.raw:
            return default
        return parse(key, self.raw[key])

    def require(self, key: str, parse: Callable[[str, Any], T]) -> T:
        self.known.append(key)
        if key not in self.raw:
            raise self._fail(key, "missing (required)")
        return parse(key, self.raw[key])

    def finish(self) -> None:
        unknown = sorted(set(self.raw) - set(self.known))
        if unknown:
            raise ConfigError(
                f"{self.where}: unknown key {unknown[0]!r}; known keys: "
                + ", ".join(sorted(self.known)), self.path)

    # -- value parsers (bound to this table for error messages) ---------------------
    def string(self, *, pattern: bool = False) -> Callable[[str, Any], str]:
        def parse(key: str, v: Any) -> str:
            if not isinstance(v, str) or not v:
                raise self._fail(key, f"must be a non-empty string, got {v!r}")
            if pattern and not ID_PATTERN.fullmatch(v):
                raise self._fail(key, f"{v!r} must match [A-Za-z0-9_.:-]{{1,64}} (no '/', '+', "
                                      "'#', '$'): it becomes part of MQTT topics or ids")
            return v
        return parse

    def integer(self, lo: int, hi: int) -> Callable[[str, Any], int]:
        def parse(key: str, v: Any) -> int:
            # bool is an int in Python; `port = true` is a mistake, not 1.
            if type(v) is not int or not lo <= v <= hi:
                raise self._fail(key, f"must be an integer within {lo}..{hi}, got {v!r}")
            return v
        return parse

    def number(self, lo: float, hi: float, *, open_lo: bool = False) -> Callable[[str, Any], float]:
        def parse(key: str, v: Any) -> float:
            ok = type(v) in (int, float) and math.isfinite(v) and v <= hi and (
                v > lo if open_lo else v >= lo)
            if not ok:
                lo_txt = f"above {lo}" if open_lo else f"at least {lo}"
                raise self._fail(key, f"must be a number {lo_txt} and at most {hi}, got {v!r}")
            return float(v)
        return parse

    def boolean(self, key: str, v: Any) -> bool:
        if type(v) is not bool:
            raise self._fail(key, f"must be true or false, got {v!r}")
        return v

    def choice(self, options: tuple[str, ...]) -> Callable[[str, Any], str]:
        def parse(key: str, v: Any) -> str:
            if v not in options:
                raise self._fail(key, f"must be one of {', '.join(options)}; got {v!r}")
            return str(v)
        return parse

    def path_value(self, key: str, v: Any) -> Path:
        if not isinstance(v, str) or not v:
            raise self._fail(key, f"must be a path string, got {v!r}")
        p = Path(v).expanduser()
        # Relative paths follow the config file, not the working directory systemd chose.
        return p if p.is_absolute() else (self.path.parent / p).resolve()

    def existing_file(self, key: str, v: Any) -> Path:
        p = self.path_value(key, v)
        if not p.is_file():
            raise self._fail(key, f"file {p} does not exist")
        return p

    def credential(self, key: str, v: Any) -> Path:
        """A systemd credential name, resolved in ``$CREDENTIALS_DIRECTORY``."""
        if not isinstance(v, str) or not v or "/" in v or v in (".", ".."):
            raise self._fail(key, f"must be a credential name (no '/'), got {v!r}")
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise self._fail(key, "needs $CREDENTIALS_DIRECTORY (set by systemd's "
                                  "LoadCredential=); outside systemd use the *_file key")
        p = Path(directory) / v
        if not p.is_file():
            raise self._fail(key, f"credential {v!r} not found in {directory}; add "
                                  f"LoadCredential={v}:... to the unit")
        return p

    def file_or_credential(self, stem: str) -> Path | None:
        """``<stem>_file`` or ``<stem>_credential``, at most one of them."""
        f = self.get(f"{stem}_file", self.existing_file, None)
        c = self.get(f"{stem}_credential", self.credential, None)
        if f is not None and c is not None:
            raise self._fail(f"{stem}_file", f"give either {stem}_file or {stem}_credential")
        return f if f is not None else c


def _section(doc: Mapping[str, Any], name: str, path: Path) -> _Table:
    return _Table(doc.get(name, {}), f"[{name}]", path)


# -- sections ---------------------------------------------------------------------------


def _junction(doc: Mapping[str, Any], path: Path) -> JunctionSection:
    if "junction" not in doc:
        raise ConfigError("[junction] missing: name the junction and its directory", path)
    t = _section(doc, "junction", path)
    name = t.require("name", t.string(pattern=True))
    where = t.require("path", t.path_value)
    t.finish()
    if not (where / "junction.toml").is_file():
        raise ConfigError(f"[junction] path: no junction.toml in {where}", path)
    return JunctionSection(name, where)


def _fallback(doc: Mapping[str, Any], path: Path) -> FallbackSection:
    if "fallback" not in doc:
        raise ConfigError("[fallback] missing: give the program stored in the signal "
                          "controller (program_file, or id/stages/greens_s)", path)
    t = _section(doc, "fallback", path)
    program_file = t.get("program_file", t.existing_file, None)
    pid = t.get("id", t.string(pattern=True), None)

    def str_list(key: str, v: Any) -> tuple[str, ...]:
        if not isinstance(v, list) or not v or not all(isinstance(s, str) for s in v):
            raise t._fail(key, f"must be a non-empty list of stage ids, got {v!r}")
        return tuple(v)

    def int_list(key: str, v: Any) -> tuple[int, ...]:
        if not isinstance(v, list) or not v or not all(type(s) is int and s > 0 for s in v):
            raise t._fail(key, f"must be a non-empty list of positive integers, got {v!r}")
        return tuple(v)

    no_stages: tuple[str, ...] = ()
    no_greens: tuple[int, ...] = ()
    stages = t.get("stages", str_list, no_stages)
    greens = t.get("greens_s", int_list, no_greens)
    offset = t.get("offset_s", t.integer(0, 119), 0)
    t.finish()
    if program_file is not None:
        if pid is not None or stages or greens:
            raise ConfigError("[fallback]: give either program_file or id/stages/greens_s", path)
        return FallbackSection(program_file=program_file)
    if pid is None or not stages or not greens:
        raise ConfigError("[fallback]: needs program_file, or all of id, stages and greens_s",
                          path)
    if len(stages) != len(greens):
        raise ConfigError(f"[fallback] greens_s: {len(greens)} values for {len(stages)} stages",
                          path)
    return FallbackSection(id=pid, stages=stages, greens_s=greens, offset_s=offset)


def _mqtt(doc: Mapping[str, Any], path: Path, junction: str) -> MqttSection:
    t = _section(doc, "mqtt", path)
    host = t.get("host", t.string(), "127.0.0.1")
    port = t.get("port", t.integer(1, 65535), 1883)
    client_id = t.get("client_id", t.string(pattern=True), f"service-{junction}")
    username = t.get("username", t.string(), None)
    password_path = t.file_or_credential("password")
    tls: TlsSection | None = None

    def tls_table(key: str, v: Any) -> TlsSection:
        tt = _Table(v, "[mqtt.tls]", path)
        out = TlsSection(ca_file=tt.file_or_credential("ca"),
                         cert_file=tt.file_or_credential("cert"),
                         key_file=tt.file_or_credential("key"))
        tt.finish()
        if (out.cert_file is None) != (out.key_file is None):
            raise ConfigError("[mqtt.tls]: a client certificate needs both cert and key", path)
        return out

    tls = t.get("tls", tls_table, None)
    keepalive = t.get("keepalive_s", t.integer(5, 600), 30)
    rmin = t.get("reconnect_min_s", t.number(0.0, 60.0, open_lo=True), 0.5)
    rmax = t.get("reconnect_max_s", t.number(0.0, 600.0, open_lo=True), 30.0)
    timeout = t.get("connect_timeout_s", t.number(0.0, 120.0, open_lo=True), 10.0)
    t.finish()
    if rmax < rmin:
        raise ConfigError(f"[mqtt] reconnect_max_s {rmax} is below reconnect_min_s {rmin}", path)
    if password_path is not None and username is None:
        raise ConfigError("[mqtt] username: required when a password is given", path)
    return MqttSection(host=host, port=port, client_id=client_id, username=username,
                       password_path=password_path, tls=tls, keepalive_s=keepalive,
                       reconnect_min_s=rmin, reconnect_max_s=rmax, connect_timeout_s=timeout)


def _metrics(doc: Mapping[str, Any], path: Path) -> MetricsSection:
    t = _section(doc, "metrics", path)
    out = MetricsSection(port=t.get("port", t.integer(0, 65535), 9108),
                         bind=t.get("bind", t.string(), "127.0.0.1"))
    t.finish()
    return out


def _controller(doc: Mapping[str, Any], path: Path) -> ControllerSection:
    t = _section(doc, "controller", path)
    # Absent keys take the section's defaults: one place, not a second copy here.
    d = ControllerSection()
    out = ControllerSection(
        adaptive=t.get("adaptive", t.boolean, d.adaptive),
        margin=t.get("margin", t.number(0.0, 0.99), d.margin),
        min_gain_s=t.get("min_gain_s", t.number(0.0, 600.0), d.min_gain_s),
        pedestrian_slack_s=_pedestrian_slack(t),
        lease_cycles=t.get("lease_cycles", t.number(1.0, 10.0, open_lo=True), d.lease_cycles),
        decision_lead_s=t.get("decision_lead_s", t.integer(1, 60), d.decision_lead_s),
        max_state_age_s=t.get("max_state_age_s", t.number(0.0, 60.0, open_lo=True),
                              d.max_state_age_s),
        program_prefix=t.get("program_prefix", t.string(pattern=True), d.program_prefix),
    )
    t.finish()
    if len(out.program_prefix) > 24:
        raise ConfigError("[controller] program_prefix: at most 24 characters (program ids "
                          "append the epoch and a variant)", path)
    return out


def _pedestrian_slack(t: _Table) -> float | None:
    """``pedestrian_floor`` (off by default) and its ``pedestrian_slack_s``."""
    on = t.get("pedestrian_floor", t.boolean, False)
    slack = t.get("pedestrian_slack_s", t.number(0.0, 120.0), PEDESTRIAN_SLACK_S)
    return slack if on else None


def _twin(doc: Mapping[str, Any], path: Path) -> TwinSection:
    t = _section(doc, "twin", path)
    d = TwinSection()
    out = TwinSection(
        evaluator=t.get("evaluator", t.choice(EVALUATORS), d.evaluator),
        workers=t.get("workers", t.integer(1, 64), d.workers),
        horizon_s=t.get("horizon_s", t.integer(30, 3600), d.horizon_s),
        timeout_s=t.get("timeout_s", t.number(0.0, 300.0, open_lo=True), d.timeout_s),
        pedestrian_weight=t.get("pedestrian_weight", t.number(0.0, 100.0, open_lo=True),
                                d.pedestrian_weight),
        startup_delay_s=t.get("startup_delay_s", t.number(0.0, 5.0), d.startup_delay_s),
        car_accel_mps2=t.get("car_accel_mps2", t.number(0.0, 5.0, open_lo=True),
                             d.car_accel_mps2),
    )
    t.finish()
    return out


def _detectors(doc: Mapping[str, Any], path: Path) -> DetectorsSection:
    t = _section(doc, "detectors", path)
    limit = MAX_PAYLOAD_BYTES[TopicKind.DETECTOR]
    out = DetectorsSection(
        max_age_s=t.get("max_age_s", t.number(0.0, 3600.0, open_lo=True), 30.0),
        max_future_s=t.get("max_future_s", t.number(0.0, 60.0), 2.0),
        # The schema's limit is the contract; a site may only be stricter.
        max_payload_bytes=t.get("max_payload_bytes", t.integer(64, limit), limit),
        restart_max_seq=t.get("restart_max_seq", t.integer(0, 1_000_000), 16),
    )
    t.finish()
    return out


_SECTIONS: Final = ("junction", "fallback", "mqtt", "metrics", "controller", "twin", "detectors")


def parse_config(doc: Mapping[str, Any], path: Path) -> ServiceConfig:
    """Validate a parsed TOML document (``path`` anchors relative paths and messages)."""
    unknown = sorted(set(doc) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"unknown section or key {unknown[0]!r} at top level; known "
                          f"sections: {', '.join(_SECTIONS)}", path)
    junction = _junction(doc, path)
    return ServiceConfig(
        source=path,
        junction=junction,
        fallback=_fallback(doc, path),
        mqtt=_mqtt(doc, path, junction.name),
        metrics=_metrics(doc, path),
        controller=_controller(doc, path),
        twin=_twin(doc, path),
        detectors=_detectors(doc, path),
    )


def load_config(path: Path | None = None) -> ServiceConfig:
    """Read and validate a service config; ``None`` is the example in ``ops/``."""
    source = (EXAMPLE_CONFIG if path is None else Path(path)).resolve()
    try:
        text = source.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the service config: {exc.strerror}", source) from exc
    try:
        doc = tomllib.loads(text.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"not valid TOML: {exc}", source) from exc
    return parse_config(doc, source)
