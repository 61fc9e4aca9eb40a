"""A real mosquitto broker for tests: private instance, free port, temp dir.

Two modes:

- ``"plain"``: one plaintext listener on 127.0.0.1, anonymous allowed. For functional
  tests of the service and the field simulator.
- ``"secure"``: the production config ``ops/mosquitto/mosquitto.conf`` with the ACL
  ``ops/mosquitto/acl.conf``, certificates from ``ops/mosquitto/make-ca.sh`` and
  passwords from ``ops/mosquitto/make-passwords.sh``; only paths and ports are
  rewritten. ``port`` is the password-over-TLS listener, ``cert_port`` the client
  certificate listener.

Use from a fixture in any test module::

    @pytest.fixture
    def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
        with running_broker(tmp_path, mode="plain") as b:
            yield b

``kill()`` (SIGKILL) and ``restart()`` (same port, same data dir) exist for fault tests.
Every broker started here is stopped at interpreter exit even if a fixture never ran
its teardown.
"""

from __future__ import annotations

import atexit
import contextlib
import getpass
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

REPO = Path(__file__).resolve().parent.parent
OPS_MOSQUITTO = REPO / "ops" / "mosquitto"
PRODUCTION_CONFIG = OPS_MOSQUITTO / "mosquitto.conf"
PRODUCTION_ACL = OPS_MOSQUITTO / "acl.conf"
MAKE_CA = OPS_MOSQUITTO / "make-ca.sh"
MAKE_PASSWORDS = OPS_MOSQUITTO / "make-passwords.sh"
MOSQUITTO_BIN = shutil.which("mosquitto") or "/usr/sbin/mosquitto"

HOST = "127.0.0.1"
DEFAULT_JUNCTION = "schlosskreuzung"
DEFAULT_DETECTORS: tuple[str, ...] = ("D1", "D2")

Mode = Literal["plain", "secure"]

_live: weakref.WeakSet[MosquittoBroker] = weakref.WeakSet()


def free_port() -> int:
    """A TCP port that was free a moment ago (the broker start retries on a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def service_identity(junction: str = DEFAULT_JUNCTION) -> str:
    return f"service-{junction}"


def field_identity(junction: str = DEFAULT_JUNCTION) -> str:
    return f"field-{junction}"


def detector_identity(detector_id: str, junction: str = DEFAULT_JUNCTION) -> str:
    """The username (and certificate CN) of one detector, as the ACL pattern expects."""
    return f"{junction}/det/{detector_id}"


def _file_name(identity: str) -> str:
    # Same mapping as the ops scripts use for file names.
    return identity.replace("/", "_")


@dataclass(frozen=True)
class Credentials:
    """What a client needs to log in as one identity on the secure broker."""

    username: str
    password: str
    certfile: Path
    keyfile: Path


def _run_script(args: Sequence[str | Path]) -> None:
    result = subprocess.run(
        ["bash", *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr.strip()}")


def render_secure_config(
    source: str, *, port: int, cert_port: int, etc_dir: Path, data_dir: Path
) -> str:
    """Rewrite the production config for a private test instance.

    Every substitution must match exactly once, so a change in the shape of the
    production file breaks the tests loudly instead of testing something else.
    """
    user = getpass.getuser()
    substitutions: list[tuple[str, str]] = [
        (r"(?m)^listener 8883$", f"listener {port} {HOST}"),
        (r"(?m)^listener 8884$", f"listener {cert_port} {HOST}"),
        (r"(?m)^pid_file .*$", f"pid_file {data_dir / 'mosquitto.pid'}"),
        (r"(?m)^persistence_location .*$", f"persistence_location {data_dir}/"),
        (r"(?m)^log_dest syslog$", "log_dest stderr"),
    ]
    text = source
    for pattern, replacement in substitutions:
        # A literal replacement: paths must not be read as regex group references.
        text, n = re.subn(pattern, replacement.replace("\\", "\\\\"), text)
        if n != 1:
            raise ValueError(f"production mosquitto.conf: expected one match of {pattern!r}")
    if "/etc/mosquitto/atsc/" not in text:
        raise ValueError("production mosquitto.conf no longer uses /etc/mosquitto/atsc/")
    text = text.replace("/etc/mosquitto/atsc/", f"{etc_dir}/")
    # As root, mosquitto would drop to the "mosquitto" user, which cannot read
    # the private temp dir; a test broker keeps the invoking user.
    return f"user {user}\n{text}"


def render_plain_config(*, port: int, data_dir: Path) -> str:
    user = getpass.getuser()
    return (
        f"user {user}\n"
        "per_listener_settings true\n"
        f"pid_file {data_dir / 'mosquitto.pid'}\n"
        "persistence true\n"
        f"persistence_location {data_dir}/\n"
        "autosave_interval 30\n"
        "log_dest stderr\n"
        "log_type all\n"
        "max_packet_size 65536\n"
        f"listener {port} {HOST}\n"
        "allow_anonymous true\n"
    )


class MosquittoBroker:
    """One private mosquitto process. Create with :func:`running_broker` or call start/stop."""

    host: str = HOST

    def __init__(
        self,
        workdir: Path,
        mode: Mode = "plain",
        *,
        junction: str = DEFAULT_JUNCTION,
        detectors: Sequence[str] = DEFAULT_DETECTORS,
        extra_config: str = "",
    ) -> None:
        self.workdir = Path(workdir)
        self.mode: Mode = mode
        self.junction = junction
        self.detectors = tuple(detectors)
        self.extra_config = extra_config
        self.data_dir = self.workdir / "data"
        self.etc_dir = self.workdir / "etc"
        self.certs_dir = self.etc_dir / "certs"
        self.secrets_dir = self.workdir / "secrets"
        self.config_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self.port = 0
        self.cert_port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._prepared = False

    # -- set-up ---------------------------------------------------------------

    @property
    def identities(self) -> tuple[str, ...]:
        return (
            service_identity(self.junction),
            field_identity(self.junction),
            *(detector_identity(d, self.junction) for d in self.detectors),
        )

    @property
    def ca_file(self) -> Path:
        return self.certs_dir / "ca.crt"

    def _prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        if self.mode == "secure":
            self.etc_dir.mkdir(exist_ok=True)
            _run_script([MAKE_CA, self.certs_dir, *self.identities])
            _run_script([MAKE_PASSWORDS, self.etc_dir / "passwd", self.secrets_dir,
                         *self.identities])
            shutil.copyfile(PRODUCTION_ACL, self.etc_dir / "acl.conf")
        self._prepared = True

    def _write_config(self) -> None:
        if self.mode == "secure":
            assert self.cert_port is not None
            text = render_secure_config(
                PRODUCTION_CONFIG.read_text(), port=self.port, cert_port=self.cert_port,
                etc_dir=self.etc_dir, data_dir=self.data_dir,
            )
        else:
            text = render_plain_config(port=self.port, data_dir=self.data_dir)
        if self.extra_config:
            text += "\n" + self.extra_config + "\n"
        self.config_path.write_text(text)

    # -- credentials ----------------------------------------------------------

    def credentials(self, identity: str) -> Credentials:
        if self.mode != "secure":
            raise RuntimeError("credentials exist only for a secure broker")
        name = _file_name(identity)
        secret = self.secrets_dir / f"{name}.password"
        if not secret.exists():
            raise KeyError(f"no identity {identity!r} on this broker")
        return Credentials(
            username=identity,
            password=secret.read_text().strip(),
            certfile=self.certs_dir / f"client-{name}.crt",
            keyfile=self.certs_dir / f"client-{name}.key",
        )

    def tls_context(
        self, *, trust_ca: bool = True, client_cert_of: str | None = None
    ) -> ssl.SSLContext:
        """A client TLS context; ``trust_ca=False`` trusts only the system CAs."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file) if trust_ca else None)
        if client_cert_of is not None:
            creds = self.credentials(client_cert_of)
            ctx.load_cert_chain(str(creds.certfile), str(creds.keyfile))
        return ctx

    def client_kwargs(self, identity: str | None = None, *, use_cert: bool = False
                      ) -> dict[str, Any]:
        """Keyword arguments for ``aiomqtt.Client`` to log in as ``identity``.

        plain mode: anonymous, ``identity`` ignored. secure mode: password over TLS on
        ``port``; with ``use_cert=True`` the client certificate on ``cert_port``.
        """
        if self.mode == "plain":
            return {"hostname": self.host, "port": self.port}
        if identity is None:
            raise ValueError("a secure broker needs an identity")
        if use_cert:
            return {"hostname": self.host, "port": self.cert_port,
                    "tls_context": self.tls_context(client_cert_of=identity)}
        creds = self.credentials(identity)
        return {"hostname": self.host, "port": self.port, "username": creds.username,
                "password": creds.password, "tls_context": self.tls_context()}

    # -- process control ------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 10.0) -> None:
        """Start on free ports (first start) and wait until every listener accepts."""
        if self.running:
            raise RuntimeError("broker already running")
        if not self._prepared:
            self._prepare()
        for attempt in range(5):
            self.port = free_port()
            self.cert_port = free_port() if self.mode == "secure" else None
            try:
                self._launch(timeout)
                return
            except _PortTakenError:
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def restart(self, timeout: float = 10.0) -> None:
        """Start again on the same ports and data dir (after stop() or kill())."""
        if self.running:
            self.stop()
        if not self.port:
            raise RuntimeError("restart() before start()")
        self._launch(timeout)

    def _ports(self) -> list[int]:
        return [p for p in (self.port, self.cert_port) if p]

    def _launch(self, timeout: float) -> None:
        self._write_config()
        with self.log_path.open("ab") as log:
            log.write(f"--- start on ports {self._ports()} ---\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                [MOSQUITTO_BIN, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )
        _live.add(self)
        deadline = time.monotonic() + timeout
        pending = self._ports()
        while pending:
            if self._proc.poll() is not None:
                log_text = self.log_text()
                self._proc = None
                if "Address already in use" in log_text.rsplit("--- start", 1)[-1]:
                    raise _PortTakenError(log_text)
                raise RuntimeError(f"mosquitto exited during start-up:\n{log_text}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"mosquitto did not listen within {timeout}s:\n"
                                   f"{self.log_text()}")
            try:
                with socket.create_connection((self.host, pending[0]), timeout=0.5):
                    pending.pop(0)
            except OSError:
                time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait; returns the exit code (None if not running)."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        self._proc = None
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL: the broker dies without saving or sending anything."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        self._proc = None

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _PortTakenError(RuntimeError):
    pass


@contextlib.contextmanager
def running_broker(
    workdir: Path,
    mode: Mode = "plain",
    *,
    junction: str = DEFAULT_JUNCTION,
    detectors: Sequence[str] = DEFAULT_DETECTORS,
    extra_config: str = "",
) -> Iterator[MosquittoBroker]:
    """Start a broker under ``workdir`` (e.g. pytest's tmp_path), stop it on exit."""
    broker = MosquittoBroker(workdir, mode, junction=junction, detectors=detectors,
                             extra_config=extra_config)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@atexit.register
def _stop_all() -> None:
    for broker in list(_live):
        with contextlib.suppress(Exception):
            broker.kill()


# Keep the public surface explicit for other test modules.
__all__ = [
    "DEFAULT_DETECTORS",
    "DEFAULT_JUNCTION",
    "HOST",
    "Credentials",
    "MosquittoBroker",
    "detector_identity",
    "field_identity",
    "free_port",
    "render_plain_config",
    "render_secure_config",
    "running_broker",
    "service_identity",
]
