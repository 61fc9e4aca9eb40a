"""Build a junction's SUMO network from its plain-XML sources with the pinned netconvert.

A junction directory holds exactly one netconvert configuration (``*.netccfg``)
naming its node, edge, connection and type files.  Building it with the
netconvert of the eclipse-sumo wheel (the same release as libsumo) makes the
committed ``.net.xml`` reproducible: ``tests/test_junction_net.py`` rebuilds it
and compares everything but netconvert's generated header comment.

Usage: ``python -m sim.netbuild scenarios/schlosskreuzung [out.net.xml]``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from controller.errors import ConfigError

_HEADER_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)


def sumo_binary(name: str) -> Path:
    """Path of a SUMO tool (``sumo``, ``netconvert``, ``netgenerate``) from the wheel.

    The venv's ``bin/`` comes first so the binary matches the pinned libsumo;
    ``sumo.SUMO_HOME`` and then ``PATH`` are fallbacks.
    """
    candidates = [Path(sys.executable).parent / name]
    try:
        import sumo  # optional wheel

        candidates.append(Path(sumo.SUMO_HOME) / "bin" / name)
    except ImportError:
        pass
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    found = shutil.which(name)
    if found:
        return Path(found)
    raise ConfigError(f"SUMO tool {name!r} not found (install eclipse-sumo into the venv)")


def netconvert_config(junction_dir: Path) -> Path:
    """The single ``*.netccfg`` of a junction directory."""
    if not junction_dir.is_dir():
        raise ConfigError("junction directory does not exist", junction_dir)
    cfgs = sorted(junction_dir.glob("*.netccfg"))
    if len(cfgs) != 1:
        raise ConfigError(
            f"expected exactly one *.netccfg, found {len(cfgs)}", junction_dir
        )
    return cfgs[0]


def default_net_path(junction_dir: Path) -> Path:
    """Where the configuration writes the network (its ``output-file``)."""
    cfg = netconvert_config(junction_dir)
    try:
        root = ET.parse(cfg).getroot()
    except ET.ParseError as exc:
        raise ConfigError(f"malformed netconvert configuration: {exc}", cfg) from exc
    node = root.find("./output/output-file")
    if node is None or not node.get("value"):
        raise ConfigError("netconvert configuration has no output/output-file", cfg)
    return (cfg.parent / str(node.get("value"))).resolve()


def build_net(junction_dir: Path, out: Path | None = None) -> Path:
    """Run netconvert on the junction's configuration; return the written network.

    ``out`` overrides the configuration's output file (tests build into a
    temporary directory and compare).  Raises ``ConfigError`` when netconvert
    fails, with its error lines in the message.
    """
    junction_dir = Path(junction_dir)
    cfg = netconvert_config(junction_dir)
    target = Path(out).resolve() if out is not None else default_net_path(junction_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    cmd = [str(sumo_binary("netconvert")), "-c", cfg.name]
    if out is not None:
        cmd += ["-o", str(target)]
    # Run inside the junction directory so relative paths in the configuration
    # (and in the header comment netconvert writes) do not depend on the caller.
    proc = subprocess.run(
        cmd, cwd=cfg.parent, capture_output=True, text=True, check=False, timeout=120
    )
    if proc.returncode != 0 or not target.is_file():
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error")]
        raise ConfigError("netconvert failed: " + ("; ".join(errors) or proc.stderr[-500:]), cfg)
    return target


def net_content(net_file: Path) -> str:
    """Network text without netconvert's header comment (date, version, options)."""
    text = Path(net_file).read_text(encoding="utf-8")
    return _HEADER_COMMENT.sub("", text, count=1)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or len(args) > 2:
        print("usage: python -m sim.netbuild <junction_dir> [out.net.xml]", file=sys.stderr)
        return 2
    try:
        path = build_net(Path(args[0]), Path(args[1]) if len(args) == 2 else None)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
