"""Every Prometheus metric of the service, defined in one place (docs/metrics.md).

Alerts and the Grafana dashboard are written against these names: rename
nothing without changing ops/ and docs/metrics.md in the same commit.

Definitions only: the service updates the attributes and serves the registry;
nothing here starts an HTTP server.  Each ``Metrics`` owns a fresh registry by
default, so tests and several instances in one process do not collide.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from controller.messages import AckStatus
from controller.wire import RejectReason

PREFIX: Final = "atsc"

#: ``kind`` label of atsc_messages_received_total.
MESSAGE_KINDS: Final = ("detector", "plan_ack", "state")
#: ``fault`` label of atsc_detector_faults_total (safety.md D1/D2).
DETECTOR_FAULTS: Final = ("stale", "stuck_on", "chattering", "dead")
#: ``rule`` label of atsc_plans_rejected_total: validator rules of safety.md.
SAFETY_RULES: Final = ("V1", "V2", "V3", "V4", "V5", "V6", "D4")

#: Decisions include twin runs of several candidates: up to a few seconds.
DECISION_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)
#: The static validator walks a cycle second by second: sub-millisecond to tens of ms.
VALIDATION_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                             0.05, 0.1)
#: One candidate over the twin horizon.
TWIN_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)
#: Source timestamp to admitted reading: network plus queueing, milliseconds.
INGEST_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """The service's metrics; attribute names are the metric names without ``atsc_``."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, version: str = "unknown"
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True) if registry is None else registry
        r = self.registry

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(f"{PREFIX}_{name}", doc, labels, registry=r)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(f"{PREFIX}_{name}", doc, labels, registry=r)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(f"{PREFIX}_{name}", doc, buckets=buckets, registry=r)

        self.build_info = gauge("build_info", "Always 1; the version label says what runs.",
                                ("version",))
        self.build_info.labels(version=version).set(1)

        # ingest
        self.messages_received_total = counter(
            "messages_received_total", "Messages received, before validation.", ("kind",))
        self.messages_rejected_total = counter(
            "messages_rejected_total", "Messages dropped by validation, by reason.", ("reason",))
        self.messages_dropped_total = counter(
            "messages_dropped_total",
            "Admitted messages dropped because the inbound buffer was full.")
        self.ingest_latency_seconds = histogram(
            "ingest_latency_seconds",
            "Arrival of an admitted reading to its hand-over to the estimator.",
            INGEST_BUCKETS)

        # detector health
        self.detector_data_age_seconds = gauge(
            "detector_data_age_seconds", "Age of the newest admitted reading per detector.",
            ("detector",))
        self.detector_healthy = gauge(
            "detector_healthy", "1 when the detector is healthy, 0 when faulty.", ("detector",))
        self.detectors_faulty = gauge("detectors_faulty", "Number of detectors now faulty.")
        self.detector_faults_total = counter(
            "detector_faults_total", "Transitions of a detector into a fault, by fault type.",
            ("fault",))

        # estimator
        self.queue_length_meters = gauge(
            "queue_length_meters", "Estimated queue length per approach.", ("approach",))
        self.estimated_delay_seconds = gauge(
            "estimated_delay_seconds", "Estimated mean delay per vehicle per approach.",
            ("approach",))
        self.arrival_flow_vehicles_per_hour = gauge(
            "arrival_flow_vehicles_per_hour", "Estimated arrival flow per approach.",
            ("approach",))

        # decisions and plans
        self.plans_proposed_total = counter(
            "plans_proposed_total", "Candidate plans proposed by the optimiser.")
        self.plans_validated_total = counter(
            "plans_validated_total", "Candidate plans that passed the safety validator.")
        self.plans_rejected_total = counter(
            "plans_rejected_total", "Candidate plans refused by the safety validator, by rule.",
            ("rule",))
        self.plans_below_pedestrian_floor_total = counter(
            "plans_below_pedestrian_floor_total",
            "Candidate plans refused because pedestrians would wait longer than under the "
            "fallback plus the slack.")
        self.plans_pushed_total = counter(
            "plans_pushed_total", "Plan commands published to the hardware (renewals included).")
        self.plan_acks_total = counter(
            "plan_acks_total", "Plan acknowledgements from the hardware, by status.", ("status",))
        self.decision_duration_seconds = histogram(
            "decision_duration_seconds",
            "Detector snapshot to plan decision, twin evaluations included.", DECISION_BUCKETS)
        self.validation_duration_seconds = histogram(
            "validation_duration_seconds", "One run of the static safety validator.",
            VALIDATION_BUCKETS)
        self.twin_evaluation_duration_seconds = histogram(
            "twin_evaluation_duration_seconds", "One candidate plan run in the SUMO twin.",
            TWIN_BUCKETS)

        # what runs at the junction
        self.lease_remaining_seconds = gauge(
            "lease_remaining_seconds", "Seconds until the lease of the running plan runs out.")
        self.fallback_active = gauge(
            "fallback_active", "1 while the hardware runs its own fallback program.")
        self.adaptive_active = gauge(
            "adaptive_active", "1 while the service's plans run at the junction.")
        self.cycle_seconds = gauge("cycle_seconds", "Cycle time of the running program.")
        self.last_plan_push_timestamp_seconds = gauge(
            "last_plan_push_timestamp_seconds", "Unix time of the last plan command published.")

        # broker connection
        self.mqtt_connected = gauge("mqtt_connected", "1 while connected to the MQTT broker.")
        self.mqtt_reconnects_total = counter(
            "mqtt_reconnects_total", "Reconnections to the MQTT broker after a loss.")

    def pre_initialise(
        self,
        detector_ids: Iterable[str],
        approaches: Iterable[str],
        *,
        rules: Iterable[str] = SAFETY_RULES,
        faults: Iterable[str] = DETECTOR_FAULTS,
    ) -> None:
        """Create every labelled child at 0 so queries and alerts see data from the start.

        A label value that never occurred is otherwise absent, and ``rate()`` or
        ``absent()`` over it would say nothing until the first event.
        """
        for kind in MESSAGE_KINDS:
            self.messages_received_total.labels(kind=kind)
        for reason in RejectReason:
            self.messages_rejected_total.labels(reason=reason.value)
        for fault in faults:
            self.detector_faults_total.labels(fault=fault)
        for rule in rules:
            self.plans_rejected_total.labels(rule=rule)
        for status in AckStatus:
            self.plan_acks_total.labels(status=status.value)
        for det in detector_ids:
            self.detector_data_age_seconds.labels(detector=det)
            # Healthy only after inputs prove it (safety.md D5): start at 0.
            self.detector_healthy.labels(detector=det).set(0)
        for approach in approaches:
            self.queue_length_meters.labels(approach=approach)
            self.estimated_delay_seconds.labels(approach=approach)
            self.arrival_flow_vehicles_per_hour.labels(approach=approach)
