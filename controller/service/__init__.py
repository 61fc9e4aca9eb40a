"""The live service (``atsc serve``): the asyncio/MQTT/Prometheus/systemd shell around the core.

All I/O of the controller lives in this package; ``controller.adaptive`` and
the rest of ``controller/`` stay sans-I/O.  Modules, one job each:

- ``config``: the TOML service configuration, strictly validated;
- ``mqtt``: ``MqttTransport``, the ``controller.transport.Transport`` over a broker;
- ``notify``: systemd's sd_notify protocol (READY, WATCHDOG, STATUS, STOPPING);
- ``app``: wiring, the control loop, start-up and shutdown (``serve_command``).

docs/service.md describes configuration and behaviour.
"""

from __future__ import annotations

from controller.service.config import ServiceConfig, load_config

__all__ = ["ServiceConfig", "load_config"]
