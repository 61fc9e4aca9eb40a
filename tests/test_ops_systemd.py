"""The systemd unit, checked by the real systemd-analyze (offline; no running systemd here)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "ops" / "systemd" / "atsc@.service"
MAX_EXPOSURE = 2.0
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"

pytestmark = pytest.mark.timeout(60)


def _directives(path: Path) -> dict[str, list[str]]:
    section = ""
    found: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return found


def exposure_level(unit: Path) -> tuple[float, str]:
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True, text=True, timeout=30, check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, f"no exposure line (rc {result.returncode}):\n{result.stdout}\n{result.stderr}"
    return float(match.group(1)), result.stdout


def test_security_exposure_is_at_most_2() -> None:
    score, report = exposure_level(UNIT)
    assert score <= MAX_EXPOSURE, report


def test_exposure_parser_sees_a_bad_unit(tmp_path: Path) -> None:
    # Guards the parser: an unhardened unit must score far above the limit.
    bare = tmp_path / "bare.service"
    bare.write_text("[Service]\nExecStart=/bin/true\n")
    score, report = exposure_level(bare)
    assert score > 5.0, report


def test_verify_offline(tmp_path: Path) -> None:
    """systemd-analyze verify inside a throw-away root.

    verify insists the ExecStart binary exists and is executable; /opt/atsc exists only
    on an installed host, so the root gets an executable placeholder at that path. All
    other checks (unknown keys, bad values, specifiers) run unchanged.
    """
    root = tmp_path / "root"
    exe = root / "opt/atsc/.venv/bin/atsc"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    shutil.copy(UNIT, units / UNIT.name)
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", f"--root={root}", "--man=no", "--recursive-errors=no",
         "atsc@schlosskreuzung.service"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr

    # The same check must reject a unit with a typo, or it proves nothing.
    (units / UNIT.name).write_text(UNIT.read_text().replace("Type=notify", "Type=notifyy"))
    bad = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", f"--root={root}", "--man=no", "--recursive-errors=no",
         "atsc@schlosskreuzung.service"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert bad.returncode != 0, bad.stderr
    assert "notifyy" in bad.stderr


def test_unit_keeps_the_service_contract() -> None:
    d = _directives(UNIT)
    expected = {
        "Service.Type": ["notify"],
        "Service.NotifyAccess": ["main"],
        "Service.Restart": ["on-failure"],
        "Service.DynamicUser": ["yes"],
        "Service.NoNewPrivileges": ["yes"],
        "Service.CapabilityBoundingSet": [""],
        "Service.AmbientCapabilities": [""],
        "Service.ProtectSystem": ["strict"],
        "Service.RestrictAddressFamilies": ["AF_INET AF_INET6 AF_UNIX"],
        "Service.SystemCallFilter": ["@system-service", "~@privileged @resources", "setpriority"],
        "Service.UMask": ["0077"],
        "Service.TimeoutStopSec": ["10s"],
        "Service.ExecStart": ["/opt/atsc/.venv/bin/atsc serve --config /etc/atsc/%i.toml"],
    }
    for key, value in expected.items():
        assert d.get(key) == value, key
    watchdog = d["Service.WatchdogSec"][0]
    assert re.fullmatch(r"\d+s", watchdog) and 5 <= int(watchdog[:-1]) <= 30
    credentials = {v.split(":", 1)[0] for v in d["Service.LoadCredential"]}
    assert {"mqtt-password", "mqtt-client.key"} <= credentials


_PT_GNU_STACK = 0x6474E551
_PF_X = 0x1


def _needs_executable_stack(path: Path) -> bool:
    """True if an ELF object's PT_GNU_STACK header asks for an executable stack."""
    with path.open("rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:  # only ELF64 is shipped here
            return False
        order = "little" if header[5] == 1 else "big"
        phoff = int.from_bytes(header[32:40], order)
        phentsize = int.from_bytes(header[54:56], order)
        phnum = int.from_bytes(header[56:58], order)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    for i in range(phnum):
        entry = table[i * phentsize:(i + 1) * phentsize]
        if int.from_bytes(entry[0:4], order) == _PT_GNU_STACK:
            return bool(int.from_bytes(entry[4:8], order) & _PF_X)
    # No header at all means the loader assumes an executable stack.
    return True


def test_native_libraries_work_under_memory_deny_write_execute() -> None:
    """MemoryDenyWriteExecute=yes makes the loader fail on libraries that need an
    executable stack; none of the service's native dependencies may ask for one."""
    assert _directives(UNIT)["Service.MemoryDenyWriteExecute"] == ["yes"]
    import importlib.util

    checked = 0
    # (import name, distribution name used for the <name>.libs directory)
    for package, dist in (("numpy", "numpy"), ("scipy", "scipy"), ("libsumo", "libsumo"),
                          ("sumo", "eclipse_sumo")):
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.submodule_search_locations, package
        for location in spec.submodule_search_locations:
            # Wheels repaired by auditwheel keep bundled libraries (OpenBLAS) next
            # to the package in <package>.libs.
            bundled = Path(location).parent / f"{dist}.libs"
            for lib in [*Path(location).rglob("*.so*"), *bundled.glob("*.so*")]:
                if lib.is_file():
                    assert not _needs_executable_stack(lib), lib
                    checked += 1
    assert checked > 10
