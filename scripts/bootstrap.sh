#!/usr/bin/env bash
# Create the virtualenv and install everything the project needs.
# As root, also install the Debian packages the tests and the live service use
# (mosquitto, prometheus); nothing installed by hand is assumed to survive.
set -euo pipefail
VENV="${1:-.venv}"
PYTHON="${PYTHON:-python3}"

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    missing=()
    for tool in mosquitto mosquitto_pub promtool prometheus; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "bootstrap: installing Debian packages (mosquitto, prometheus)" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends mosquitto mosquitto-clients prometheus >/dev/null
        # The Debian packages start their own daemons; the tests start private instances.
        (systemctl disable --now mosquitto prometheus >/dev/null 2>&1 || true)
        (pkill -x mosquitto || true; pkill -x prometheus || true)
    fi
fi

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[dev]"
echo "bootstrap: ready ($VENV)" >&2
