"""MqttTransport without a broker: the inbound buffer, hardware states, reconnect backoff.

The broker side (connect, subscribe, reconnect after SIGKILL) runs against real mosquitto
in test_service_faults.py and test_fieldmqtt_hil.py; these are the rules that need no
network to show.
"""

from __future__ import annotations

import random

from test_wire_gate import JUNCTION, NOW, _gate, _ok

from controller.messages import DetectorReading, HardwareState
from controller.metrics import Metrics
from controller.service.config import MqttSection
from controller.service.mqtt import MqttTransport, backoff_delay
from controller.wire import encode_state


def test_a_full_inbound_buffer_drops_the_oldest_and_counts_every_drop() -> None:
    """Admitted messages the core does not drain in time: lost, but never silently."""
    metrics = Metrics()
    transport = MqttTransport(MqttSection(), JUNCTION, _gate(), metrics, version="test",
                              max_age_s=30.0, max_future_s=2.0, clock=lambda: NOW,
                              max_buffered=3)
    for seq in range(1, 6):
        transport.handle(*_ok("N_1_stop", seq))
    dropped = metrics.registry.get_sample_value("atsc_messages_dropped_total")
    assert dropped == 2
    kept = [a.message for a in transport.receive_timed()]
    assert [r.seq for r in kept if isinstance(r, DetectorReading)] == [3, 4, 5]
    transport.handle(*_ok("N_1_stop", 6))
    assert [a.message.seq for a in transport.receive_timed()] == [6]  # type: ignore[union-attr]
    assert metrics.registry.get_sample_value("atsc_messages_dropped_total") == 2


def test_a_hardware_state_for_another_number_of_signal_groups_is_rejected_and_counted() -> None:
    metrics = Metrics()
    transport = MqttTransport(MqttSection(), JUNCTION, _gate(), metrics, version="test",
                              max_age_s=30.0, max_future_s=2.0, clock=lambda: NOW,
                              signal_groups=3)
    for n, chars in enumerate(("rGr", "rG", "rGrr"), start=1):
        state = HardwareState(ts=NOW, program_id="p", fallback=False, cycle_second=n,
                              signal_states=chars)
        transport.handle(transport.topic_state, encode_state(state))
    admitted = [a.message for a in transport.receive_timed()]
    assert [s.signal_states for s in admitted if isinstance(s, HardwareState)] == ["rGr"]
    assert metrics.registry.get_sample_value(
        "atsc_messages_rejected_total", {"reason": "schema"}) == 2


def test_reconnect_backoff_grows_to_its_cap_with_jitter() -> None:
    """M4: exponential backoff, capped, each delay a random 50-100 % of its step, so the
    services of a district do not reconnect in lockstep after a broker restart."""
    rng = random.Random(7)
    steps = [min(30.0, 0.5 * 2.0**a) for a in range(12)]
    for attempt, step in enumerate(steps):
        delays = [backoff_delay(attempt, 0.5, 30.0, rng) for _ in range(200)]
        assert all(0.5 * step <= d <= step for d in delays), attempt
        assert max(delays) - min(delays) > 0.3 * step  # jittered, not one value
    assert backoff_delay(10_000, 0.5, 30.0, rng) <= 30.0  # no overflow for long outages
