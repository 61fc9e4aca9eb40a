"""systemd's notification protocol (sd_notify), spoken directly over ``$NOTIFY_SOCKET``.

The protocol is one datagram of ``KEY=value`` lines to a Unix socket; a
dependency for it is not worth having.  Outside systemd (no
``$NOTIFY_SOCKET``) every call does nothing, so the service runs the same
from a shell.  A failing send is logged once and never raised: the
notification channel must not be able to take the controller down.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Final

log = logging.getLogger("atsc.service.notify")

#: STATUS= is shown by ``systemctl status``; keep it to one short line.
_STATUS_MAX: Final = 200


class Notifier:
    """Sends READY/WATCHDOG/STATUS/STOPPING to the service manager, if there is one."""

    def __init__(self, address: str | None = None) -> None:
        addr = os.environ.get("NOTIFY_SOCKET") if address is None else address
        self._address: str | None = None
        self._sock: socket.socket | None = None
        self._warned = False
        if addr:
            # A leading '@' names a socket in the abstract namespace (Linux).
            self._address = "\0" + addr[1:] if addr.startswith("@") else addr
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
        # WATCHDOG_PID names the process the watchdog expects pings from; a child
        # that inherited the environment must not ping on its parent's behalf.
        wd_pid = os.environ.get("WATCHDOG_PID")
        self._watchdog_ok = not wd_pid or wd_pid == str(os.getpid())

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *lines: str) -> bool:
        sock, addr = self._sock, self._address
        if sock is None or addr is None:
            return False
        try:
            sock.sendto("\n".join(lines).encode("utf-8"), addr)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("sd_notify to %s failed: %s (further failures not logged)",
                            addr.replace("\0", "@"), exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", _status(status))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1") if self._watchdog_ok else False

    def status(self, text: str) -> bool:
        return self.send(_status(text))

    def stopping(self, status: str) -> bool:
        return self.send("STOPPING=1", _status(status))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status(text: str) -> str:
    one_line = " ".join(text.split())
    return "STATUS=" + one_line[:_STATUS_MAX]
