"""Ingest through a real broker: detector messages per second and publish-to-estimator latency.

Issue target: at least 2,000 detector messages per second through the broker, p99
ingest-to-estimator latency at most 50 ms.

A private mosquitto (tests/_mqtt_broker.py) on a free port; a separate publisher process
sends valid readings of the Schlosskreuzung detectors at a fixed offered rate (paced on
the monotonic clock, ``ts`` = wall clock at publish); this process receives them with
aiomqtt and runs each one through the service's own ingest:

- ``controller.service.mqtt.MqttTransport.handle``: the service's ingest function
  (ReadingGate, rejection metrics, the inbound buffer);
- ``DetectorPerception.on_reading`` as the service builds it: HealthMonitor.observe,
  Estimator.observe, snapshot source.

Latency is wall clock from the reading's ``ts`` to just after the estimator saw it.
Three modes:

- ``service``: the real thing. ``controller.service.app.Service`` runs in this process
  with the SUMO twin (2 worker processes, 300 s horizon) and its own ingest path
  (MqttTransport -> ingest task -> core thread -> estimator); a fake signal
  controller publishes a state every second whose switch point is always 5 s ahead,
  so a decision epoch starts as soon as the previous one completes: twin evaluations
  are in flight during the whole measurement.  The only addition is a spy around
  ``DetectorPerception.on_reading`` that takes the time after each call;
- ``direct``: each message goes to the estimator as soon as it arrives, on the event
  loop, nothing else running: what the ingest path itself costs;
- ``loop``: the buffer drained once per second on a core thread, as ``atsc serve`` did
  before decisions were split (for comparison).

Prints a table and writes JSON; asserts nothing.

    .venv/bin/python bench/ingest.py [--rates 2000,4000] [--duration 10]
                                     [--modes service,direct] [--json out/bench/ingest.json]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from controller.adaptive import DetectorPerception, EstimateSnapshots  # noqa: E402
from controller.messages import DetectorReading  # noqa: E402
from controller.wire import TopicKind, encode_reading, topic_for  # noqa: E402

JUNCTION = "schlosskreuzung"
#: After the publisher ends, how long stragglers may still arrive before they count as lost.
GRACE_S = 2.0


def _model() -> Any:
    from sim.junction import load_junction

    return load_junction(JUNCTION)


# -- publisher (separate process) ------------------------------------------------------------


def publish(port: int, rate: float, duration: float, seq0: int = 0) -> None:
    """Send ``rate`` readings per second for ``duration`` s, round-robin over the detectors."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from controller.messages import DetectorKind

    infos = _model().detectors
    detectors = [d.id for d in infos]
    queue = [d.kind is DetectorKind.QUEUE for d in infos]
    button = [d.kind is DetectorKind.PUSH_BUTTON for d in infos]
    topics = [topic_for(JUNCTION, TopicKind.DETECTOR, d) for d in detectors]
    seqs = [seq0] * len(detectors)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{os.getpid()}")
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    n_total = int(rate * duration)
    start = time.monotonic()
    sent = 0
    try:
        for i in range(n_total):
            due = start + i / rate
            ahead = due - time.monotonic()
            if ahead > 0.0005:
                time.sleep(ahead)
            k = i % len(detectors)
            # Plausible for every kind (detector health must call them healthy).
            reading = DetectorReading(detectors[k], time.time(), seqs[k], count=i % 2,
                                      occupancy=0.12, presence=i % 2 == 1, speed_mps=9.5,
                                      queue_m=7.0 if queue[k] else None,
                                      pressed=False if button[k] else None)
            seqs[k] += 1
            if client.publish(topics[k], encode_reading(reading), qos=0).rc == 0:
                sent += 1
        elapsed = time.monotonic() - start
        time.sleep(0.2)  # let paho's thread write what it holds
    finally:
        client.loop_stop()
        client.disconnect()
    print(json.dumps({"sent": sent, "elapsed_s": elapsed}), flush=True)


# -- subscriber (this process): the service's ingest -------------------------------------------


@dataclass
class Row:
    mode: str
    rate_offered: float
    sent: int
    send_rate: float
    received: int
    rate_achieved: float
    rejected: int
    lost: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    #: service mode: decisions completed during the measurement, and the share of
    #: samples (every 50 ms) with a twin evaluation in flight.
    decisions: int | None = None
    in_flight: float | None = None
    #: service mode: p99 from arrival at the service's transport to the core thread.
    service_p99_ms: float | None = None


class Ingest:
    """The service's transport and perception, without the optimiser and the twin."""

    def __init__(self, model: Any, mode: str) -> None:
        from controller.metrics import Metrics
        from controller.service.config import MqttSection
        from controller.service.mqtt import MqttTransport
        from controller.wire import ReadingGate

        self.mode = mode
        self.metrics = Metrics(version="bench")
        gate = ReadingGate({d.id: d for d in model.detectors}, JUNCTION)
        self.transport = MqttTransport(MqttSection(), JUNCTION, gate, self.metrics,
                                       version="bench", max_age_s=gate.max_age_s,
                                       max_future_s=gate.max_future_s)
        self.perception = DetectorPerception(
            model.signals, model.detectors, EstimateSnapshots(),
            lanes_per_group={g.id: max(1, len(model.group_in_lanes.get(g.id, ())))
                             for g in model.signals.groups if g.is_vehicular},
            turns={g.id: g.label for g in model.signals.groups},
        )
        self.latencies: list[float] = []
        self.received = 0
        self.first: float | None = None
        self.last = 0.0

    def on_message(self, topic: str, payload: bytes) -> None:
        now = time.time()
        self.received += 1
        if self.first is None:
            self.first = now
        self.last = now
        self.transport.handle(topic, payload)
        if self.mode == "direct":
            self.drain()

    def drain(self) -> None:
        for a in self.transport.receive_timed():
            msg = a.message
            if isinstance(msg, DetectorReading):
                self.perception.on_reading(msg, a.received)
                self.latencies.append(time.time() - msg.ts)

    def rejected(self) -> int:
        total = 0.0
        for metric in self.metrics.messages_rejected_total.collect():
            total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
        return int(total)


async def measure(port: int, mode: str, rate: float, duration: float, model: Any, *,
                  period_s: float) -> Row:
    ingest = Ingest(model, mode)
    core = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="core")
    loop = asyncio.get_running_loop()

    async def control_loop() -> None:
        # The service's cadence: drain once per period on a single core thread.
        while True:
            await asyncio.sleep(period_s)
            await loop.run_in_executor(core, ingest.drain)

    async with aiomqtt.Client("127.0.0.1", port, identifier=f"bench-sub-{os.getpid()}",
                              max_queued_incoming_messages=0) as client:
        await client.subscribe(f"atsc/{JUNCTION}/det/+", qos=0)

        async def receive() -> None:
            async for m in client.messages:
                payload = m.payload
                assert isinstance(payload, bytes)
                ingest.on_message(str(m.topic), payload)

        rx = asyncio.create_task(receive())
        ctl = asyncio.create_task(control_loop()) if mode == "loop" else None
        pub = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--publish", "--port", str(port), "--rate", str(rate),
            "--duration", str(duration), stdout=asyncio.subprocess.PIPE)
        out, _ = await pub.communicate()
        report = json.loads(out.decode().strip().splitlines()[-1])
        deadline = time.monotonic() + GRACE_S
        while ingest.received < report["sent"] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if ctl is not None:
            await asyncio.sleep(period_s)  # one more drain for what is buffered
            ctl.cancel()
        rx.cancel()
        for task in (rx, ctl):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await task
    core.shutdown(wait=True)
    if mode == "loop":
        ingest.drain()
    lat = np.array(ingest.latencies) * 1000.0
    span = ingest.last - ingest.first if ingest.first is not None else 0.0
    return Row(
        mode=mode,
        rate_offered=rate,
        sent=report["sent"],
        send_rate=report["sent"] / report["elapsed_s"] if report["elapsed_s"] else 0.0,
        received=ingest.received,
        rate_achieved=ingest.received / span if span > 0 else 0.0,
        rejected=ingest.rejected(),
        lost=max(0, report["sent"] - ingest.received),
        p50_ms=float(np.percentile(lat, 50)) if lat.size else None,
        p99_ms=float(np.percentile(lat, 99)) if lat.size else None,
        max_ms=float(lat.max()) if lat.size else None,
    )


FALLBACK = ("P1", "P2", "P3", "P4"), (26, 12, 26, 10)


def service_config(tmp: Path, port: int) -> Path:
    stages, greens = FALLBACK
    path = tmp / "bench-service.toml"
    path.write_text(f"""
[junction]
name = "{JUNCTION}"
path = "{REPO / 'scenarios' / JUNCTION}"

[fallback]
id = "fallback-bench"
stages = {json.dumps(list(stages))}
greens_s = {json.dumps(list(greens))}

[mqtt]
host = "127.0.0.1"
port = {port}
reconnect_min_s = 0.2
reconnect_max_s = 1.0

[metrics]
port = 0

[controller]
adaptive = true

[twin]
evaluator = "sumo"
workers = 2
horizon_s = 300
timeout_s = 10.0
""")
    return path


async def _run_publisher(port: int, rate: float, duration: float, seq0: int) -> dict[str, Any]:
    pub = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--publish", "--port", str(port), "--rate", str(rate),
        "--duration", str(duration), "--seq0", str(seq0), stdout=asyncio.subprocess.PIPE)
    try:
        out, _ = await pub.communicate()
    except asyncio.CancelledError:
        pub.kill()
        await pub.wait()
        raise
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def _hardware(port: int, service: Any, stop: asyncio.Event) -> None:
    """A signal controller that runs the fallback, its switch point always 5 s ahead."""
    from controller.messages import HardwareState
    from controller.plans import group_states
    from controller.wire import encode_state

    fb = service.fallback
    signals = service.model.signals
    states = group_states(signals, fb)
    cs = fb.cycle_s - 5
    chars = "".join(states[g][cs] for g in signals.group_ids)
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"bench-hw-{os.getpid()}") as c:
        while not stop.is_set():
            st = HardwareState(ts=time.time(), program_id=fb.id, fallback=True, cycle_second=cs,
                               signal_states=chars)
            await c.publish(topic_for(JUNCTION, TopicKind.STATE), encode_state(st), qos=0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


async def measure_service(port: int, rate: float, duration: float, model: Any, *,
                          tmp: Path, seq0: int) -> Row:
    """The live service, twin and decisions included, at ``rate`` readings per second."""
    from controller.service.app import Service, load_fallback
    from controller.service.config import load_config

    cfg = load_config(service_config(tmp, port))
    service = Service(cfg, model, load_fallback(cfg, model.signals))
    core = service.core
    latencies: list[float] = []
    measuring = False
    perception = service.parts.perception
    on_reading = perception.on_reading

    def spy(reading: DetectorReading, now: float) -> None:
        on_reading(reading, now)
        if measuring:
            latencies.append(time.time() - reading.ts)

    perception.on_reading = spy  # type: ignore[method-assign]
    # The service's own part: arrival at MqttTransport.handle to the core thread.
    internal: list[float] = []
    ingest = service._ingest

    def ingest_spy(batch: list[Any]) -> Any:
        handed = time.perf_counter()
        if measuring:
            internal.extend(handed - a.arrived for a in batch
                            if isinstance(a.message, DetectorReading))
        return ingest(batch)

    service._ingest = ingest_spy  # type: ignore[method-assign]
    stop = asyncio.Event()
    served = asyncio.create_task(service.run(stop))
    hardware = asyncio.create_task(_hardware(port, service, stop))
    try:
        # Warm up: detectors healthy, twin workers started, one decision completed.
        warm = asyncio.create_task(_run_publisher(port, 200.0, 600.0, 0))
        deadline = time.monotonic() + 180
        while not (service.ready and core.stats.recorded >= 1) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        if not service.ready:
            raise RuntimeError("the service never became ready")
        warm.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await warm
        await asyncio.sleep(1.0)
        recorded0 = core.stats.recorded
        samples: list[bool] = []
        measuring = True

        async def sample() -> None:
            while True:
                samples.append(core.pending is not None)
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample())
        report = await _run_publisher(port, rate, duration, seq0)
        grace = time.monotonic() + GRACE_S
        while len(latencies) < report["sent"] and time.monotonic() < grace:
            await asyncio.sleep(0.05)
        measuring = False
        sampler.cancel()
        decisions = core.stats.recorded - recorded0
    finally:
        stop.set()
        hardware.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await hardware
        await asyncio.wait_for(served, 30)
    lat = np.array(latencies) * 1000.0
    rejected = 0.0
    for metric in service.metrics.messages_rejected_total.collect():
        rejected += sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return Row(
        mode="service", rate_offered=rate, sent=report["sent"],
        send_rate=report["sent"] / report["elapsed_s"] if report["elapsed_s"] else 0.0,
        received=len(latencies),
        rate_achieved=len(latencies) / report["elapsed_s"] if report["elapsed_s"] else 0.0,
        rejected=int(rejected), lost=max(0, report["sent"] - len(latencies)),
        p50_ms=float(np.percentile(lat, 50)) if lat.size else None,
        p99_ms=float(np.percentile(lat, 99)) if lat.size else None,
        max_ms=float(lat.max()) if lat.size else None,
        decisions=decisions,
        in_flight=sum(samples) / len(samples) if samples else None,
        service_p99_ms=float(np.percentile(internal, 99)) * 1000.0 if internal else None,
    )


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def table(rows: list[Row]) -> str:
    head = (f"{'mode':7s} {'offered/s':>9s} {'sent/s':>8s} {'achieved/s':>10s} "
            f"{'received':>8s} {'lost':>6s} {'rejected':>8s} {'p50 ms':>7s} {'p99 ms':>7s} "
            f"{'max ms':>7s} {'decisions':>9s} {'in flight':>9s} {'svc p99':>7s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        dec = "-" if r.decisions is None else str(r.decisions)
        fl = "-" if r.in_flight is None else f"{r.in_flight:.0%}"
        lines.append(f"{r.mode:7s} {r.rate_offered:9.0f} {r.send_rate:8.0f} "
                     f"{r.rate_achieved:10.0f} {r.received:8d} {r.lost:6d} {r.rejected:8d} "
                     f"{_ms(r.p50_ms):>7s} {_ms(r.p99_ms):>7s} {_ms(r.max_ms):>7s} "
                     f"{dec:>9s} {fl:>9s} {_ms(r.service_p99_ms):>7s}")
    return "\n".join(lines)


def machine() -> dict[str, object]:
    mosquitto = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True,
                               check=False).stdout.splitlines()[:1]
    return {"cpus": os.cpu_count(), "python": sys.version.split()[0],
            "aiomqtt": aiomqtt.__version__ if hasattr(aiomqtt, "__version__") else "?",
            "mosquitto": mosquitto[0] if mosquitto else "?",
            "load_avg": os.getloadavg()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default="2000,4000")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--modes", default="service,direct")
    p.add_argument("--json", type=Path, default=REPO / "out" / "bench" / "ingest.json")
    # Internal: the publisher process.
    p.add_argument("--publish", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    p.add_argument("--seq0", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.publish:
        publish(args.port, args.rate, args.duration, args.seq0)
        return 0

    from controller.service.app import PERIOD_S
    from tests._mqtt_broker import running_broker

    rates = [float(r) for r in args.rates.split(",") if r]
    modes = [m for m in args.modes.split(",") if m]
    model = _model()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="atsc-bench-") as tmp, \
            running_broker(Path(tmp)) as broker:
        for mode in modes:
            for k, rate in enumerate(rates):
                if mode == "service":
                    row = asyncio.run(measure_service(broker.port, rate, args.duration, model,
                                                      tmp=Path(tmp), seq0=1_000_000 * (k + 1)))
                else:
                    row = asyncio.run(measure(broker.port, mode, rate, args.duration, model,
                                              period_s=PERIOD_S))
                rows.append(row)
                print(f"  {mode} {rate:.0f}/s: achieved {row.rate_achieved:.0f}/s, "
                      f"p99 {_ms(row.p99_ms)} ms, lost {row.lost}", file=sys.stderr)
    print(f"target: >= 2000 msg/s, p99 <= 50 ms; {len(model.detectors)} detectors, "
          f"{args.duration:.0f} s per row; service: SUMO twin, 2 workers, 300 s horizon, "
          f"a decision whenever the last one completed; loop: drained every {PERIOD_S:.1f} s")
    print(table(rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "target": {"rate_per_s": 2000, "p99_ms": 50},
        "duration_s": args.duration, "detectors": len(model.detectors),
        "loop_period_s": PERIOD_S, "machine": machine(),
        "rows": [asdict(r) for r in rows],
    }, indent=2) + "\n")
    print(f"json: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
