"""Hardware-in-the-loop soak with injected faults: `atsc field` + `atsc serve` on a real broker.

Issue target: one simulated hour of HIL operation at accelerated time with faults
injected (broker restarts, a detector outage, garbage messages, a service crash):
zero unsafe states at the field, zero service crashes from input, fallback entered
and left as the rules say (docs/hil.md), service RSS growth at most 10 % and at most
300 MB.  This script prints figures and a fault table and writes them to JSON; it
asserts nothing (tests/test_soak_smoke.py is the short test version).

What it runs, all on this machine:

1. a private mosquitto on a free port (tests/_mqtt_broker.py, plain listener);
2. an observer (this process, aiomqtt) on state, plan, plan/ack, service/status and
   det/+, reconnecting by itself: fallback transitions, statuses, plans and acks with
   the timestamps their senders put in them;
3. ``atsc field SCENARIO --broker ... --speed X --end S`` with the detector outage
   passed as ``ATSC_FIELD_SILENCE`` (sim/field_mqtt.py);
4. once the field has written ``fallback.json``: ``atsc serve --config <run>/service.toml
   --broker ... --metrics-port N`` (its [fallback] program_file is that file);
5. the fault schedule, in simulated seconds of the field, run on the wall clock
   (sim / speed after the field's first state): broker SIGKILL + restart (twice), a
   burst of garbage on detector topics, the outage, SIGKILL of the service and a
   restart after a pause (what systemd would do), SIGTERM of the service near the end;
6. every 2 s the service's VmRSS from /proc (per service instance; its twin workers
   separately), every 5 s a /metrics scrape; an unexpected service exit is counted as
   a crash and the service restarted.

At the end it reads the field's hil.json (monitor faults = unsafe states) and checks
every fallback entered and left against the rules.

    .venv/bin/python bench/soak.py [--quick] [--scenario midday] [--sim-s 3600]
        [--speed 4] [--evaluator sumo|analytic] [--faults all|broker1,garbage,...]
        [--out out/soak] [--json out/soak/soak.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from controller.messages import DetectorReading  # noqa: E402
from controller.wire import (  # noqa: E402
    Rejected,
    TopicKind,
    decode_ack,
    decode_plan,
    decode_state,
    decode_status,
    encode_reading,
    topic_for,
)
from tests._mqtt_broker import MosquittoBroker, free_port  # noqa: E402

J = "schlosskreuzung"
ATSC = REPO / ".venv" / "bin" / "atsc"
FAULTS = ("broker1", "garbage", "outage", "broker2", "crash", "sigterm")
#: The detector outage: every detector of the north approach (signal groups K1, K2 lose
#: all their detectors, so the service must stop adapting: safety.md D2).
OUTAGE_DETECTORS = ("N1_sl", "N2_sl", "N3_sl", "N1_up", "N2_up", "N1_q", "N2_q", "N3_q",
                    "N_bus")
#: The detector identity the garbage is published as (plain broker: client id only).
GARBAGE_DETECTOR = "S1_sl"
#: [detectors] restart_max_seq of the service config below.
RESTART_MAX_SEQ = 16
RSS_PERIOD_S = 2.0
SCRAPE_PERIOD_S = 5.0


# -- schedule ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """When each fault starts, in simulated seconds of the field (fractions of the run)."""

    sim_s: float
    speed: float
    faults: tuple[str, ...]

    def at(self, fault: str) -> float:
        share = {"broker1": 0.15, "garbage": 0.25, "outage": 0.30, "broker2": 0.68,
                 "crash": 0.78, "sigterm": 0.95}[fault]
        return round(self.sim_s * share)

    @property
    def outage_end(self) -> float:
        return round(self.sim_s * 0.62)

    # Wall-clock pauses (a restarted process does not care how fast the field runs).
    broker1_down_s: float = 3.0
    garbage_repeats: int = 40

    @property
    def crash_down_s(self) -> float:
        """10 s, or longer than one cycle at the ceiling (120 s, safety.md V5) at this speed.

        The field leaves a plan only at its next switch point; a service back sooner than
        that never shows the fallback, and a run that should prove D3 would prove nothing.
        """
        return max(10.0, 120.0 / self.speed + 2.0)

    @property
    def crash_latest(self) -> float:
        """The crash waits for the field to run a plan of the service, until here at most.

        Killing the service while the field already runs its own program (after the detector
        outage the service may keep the fallback when no candidate beats it by the margin)
        would leave nothing for D3 to show.
        """
        return round(self.sim_s * 0.88)

    @property
    def broker2_down_s(self) -> float:
        """15 s, less in short runs so the service is back before the crash fault."""
        return min(15.0, 0.04 * self.sim_s / self.speed)

    def silence_env(self) -> str:
        if "outage" not in self.faults:
            return ""
        return f"{','.join(OUTAGE_DETECTORS)}@{self.at('outage'):g}-{self.outage_end:g}"


# -- the observer -----------------------------------------------------------------------------


@dataclass
class Observed:
    states: list[dict[str, Any]] = field(default_factory=list)  # transitions only
    statuses: list[dict[str, Any]] = field(default_factory=list)
    plans: list[dict[str, Any]] = field(default_factory=list)
    acks: list[dict[str, Any]] = field(default_factory=list)
    state_ts: list[float] = field(default_factory=list)  # every state's ts (gaps = outages)
    det_last: dict[str, tuple[int, float]] = field(default_factory=dict)
    det_count: Counter[str] = field(default_factory=Counter)
    first_state_wall: float | None = None
    connects: int = 0
    bad: list[str] = field(default_factory=list)


class Observer:
    """Follows the junction's topics like a monitoring client; survives broker restarts."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.seen = Observed()
        self._last: tuple[str, bool] | None = None
        self._last_ts = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with aiomqtt.Client("127.0.0.1", self.port, identifier="soak-observer",
                                          keepalive=10) as client:
                    self.seen.connects += 1
                    for kind in (TopicKind.STATE, TopicKind.PLAN, TopicKind.PLAN_ACK,
                                 TopicKind.SERVICE_STATUS):
                        await client.subscribe(topic_for(J, kind), qos=1)
                    await client.subscribe(f"atsc/{J}/det/+", qos=0)
                    reader = asyncio.create_task(self._read(client))
                    stopper = asyncio.create_task(stop.wait())
                    await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    for t in (reader, stopper):
                        t.cancel()
                    res = await asyncio.gather(reader, stopper, return_exceptions=True)
                    if isinstance(res[0], aiomqtt.MqttError):
                        raise res[0]
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)

    async def _read(self, client: aiomqtt.Client) -> None:
        async for m in client.messages:
            topic = str(m.topic)
            payload = m.payload if isinstance(m.payload, bytes) else b""
            now = time.time()
            if "/det/" in topic:
                det = topic.rsplit("/", 1)[1]
                with contextlib.suppress(Exception):
                    obj = json.loads(payload)
                    self.seen.det_last[det] = (int(obj["seq"]), float(obj["ts"]))
                    self.seen.det_count[det] += 1
                continue
            if topic.endswith("/state"):
                self._on_state(payload, topic, now)
            elif topic.endswith("/plan/ack"):
                a = decode_ack(payload, topic=topic)
                if isinstance(a, Rejected):
                    self.seen.bad.append(f"ack {a.reason}")
                else:
                    self.seen.acks.append({"ts": a.ts, "recv": now, "seq": a.seq,
                                           "program_id": a.program_id,
                                           "status": a.status.value, "reason": a.reason})
            elif topic.endswith("/plan"):
                p = decode_plan(payload, topic=topic)
                if isinstance(p, Rejected):
                    self.seen.bad.append(f"plan {p.reason}")
                else:
                    self.seen.plans.append({"ts": p.issued, "recv": now, "seq": p.seq,
                                            "program_id": p.program.id, "lease_s": p.lease_s,
                                            "cycle_s": p.program.cycle_s})
            elif topic.endswith("/service/status"):
                s = decode_status(payload, topic=topic)
                if isinstance(s, Rejected):
                    self.seen.bad.append(f"status {s.reason}")
                elif not self.seen.statuses or self.seen.statuses[-1]["ts"] != s.ts:
                    self.seen.statuses.append({"ts": s.ts, "recv": now, "state": s.state.value,
                                               "retained": bool(m.retain)})

    def _on_state(self, payload: bytes, topic: str, now: float) -> None:
        s = decode_state(payload, topic=topic)
        if isinstance(s, Rejected):
            self.seen.bad.append(f"state {s.reason}")
            return
        if s.ts <= self._last_ts:
            return  # a retained copy of an old state after a reconnect
        self._last_ts = s.ts
        if self.seen.first_state_wall is None:
            self.seen.first_state_wall = s.ts
        self.seen.state_ts.append(s.ts)
        key = (s.program_id, s.fallback)
        if key != self._last:
            self._last = key
            self.seen.states.append({"ts": s.ts, "recv": now, "program_id": s.program_id,
                                     "fallback": s.fallback, "cycle_second": s.cycle_second})


# -- the service ------------------------------------------------------------------------------


def service_config(path: Path, fallback_file: Path, port: int, metrics_port: int, *,
                   evaluator: str, margin: float) -> Path:
    """ops/schlosskreuzung.toml with this run's broker, metrics port and fallback program."""
    path.write_text(f"""# bench/soak.py, one soak run; the rest as in ops/schlosskreuzung.toml.
[junction]
name = "{J}"
path = "{REPO / 'scenarios' / J}"

[fallback]
program_file = "{fallback_file}"

[mqtt]
host = "127.0.0.1"
port = {port}
client_id = "service-{J}"
keepalive_s = 30
reconnect_min_s = 0.5
reconnect_max_s = 30.0

[metrics]
port = {metrics_port}
bind = "127.0.0.1"

[controller]
adaptive = true
margin = {margin:g}
min_gain_s = 0.2
lease_cycles = 2.5
decision_lead_s = 12
max_state_age_s = 5.0
program_prefix = "atsc"

[twin]
evaluator = "{evaluator}"
workers = 2
horizon_s = 300
timeout_s = 10.0

[detectors]
max_age_s = 30.0
max_future_s = 2.0
max_payload_bytes = 1024
restart_max_seq = 16
""")
    return path


@dataclass
class Instance:
    """One run of `atsc serve` (a crash or kill ends it; a restart is a new instance)."""

    n: int
    proc: subprocess.Popen[bytes]
    log: Path
    started: float
    rss: list[tuple[float, int]] = field(default_factory=list)  # (wall, kB)
    children_rss: list[tuple[float, int]] = field(default_factory=list)
    scrapes: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    deliberate: str | None = None  # "SIGKILL" / "SIGTERM" when this script ended it
    ended: float | None = None
    exit_code: int | None = None
    stop_s: float | None = None  # SIGTERM to exit


def _rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _descendants_rss_kb(pid: int) -> int:
    total, todo = 0, _children(pid)
    while todo:
        c = todo.pop()
        total += _rss_kb(c) or 0
        todo += _children(c)
    return total


WANTED = ("atsc_fallback_active", "atsc_adaptive_active", "atsc_mqtt_connected",
          "atsc_mqtt_reconnects_total", "atsc_plans_pushed_total", "atsc_detectors_faulty",
          "atsc_messages_rejected_total", "atsc_messages_received_total",
          "atsc_plan_acks_total", "atsc_detector_faults_total", "atsc_detector_healthy")


def scrape(port: int) -> dict[str, float] | None:
    """The wanted samples of /metrics as ``name{label="v"}`` -> value."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as r:
            text = r.read().decode()
    except OSError:
        return None
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(WANTED):
            continue
        name, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[name] = float(value)
    return out


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out: Path = args.out.resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.sched = Schedule(float(args.sim_s), float(args.speed), tuple(args.faults))
        self.broker = MosquittoBroker(self.out / "broker", "plain")
        self.metrics_port = free_port()
        self.instances: list[Instance] = []
        self.events: list[dict[str, Any]] = []  # what this script did, when
        self.crashes: list[dict[str, Any]] = []  # unexpected service exits
        self.field: subprocess.Popen[bytes] | None = None
        self.observer: Observer | None = None
        self.config: Path | None = None
        self._lock = asyncio.Lock()

    def note(self, what: str, **kw: Any) -> dict[str, Any]:
        ev = {"event": what, "ts": time.time(), **kw}
        self.events.append(ev)
        print(f"[soak {self.elapsed():7.1f}s sim~{self.sim_now():6.0f}] {what} "
              f"{json.dumps(kw) if kw else ''}", flush=True)
        return ev

    def elapsed(self) -> float:
        return time.time() - self.t_start

    def sim_now(self) -> float:
        t0 = self.observer.seen.first_state_wall if self.observer else None
        return 0.0 if t0 is None else (time.time() - t0) * self.sched.speed

    def wall_of(self, sim_s: float) -> float:
        assert self.observer is not None and self.observer.seen.first_state_wall is not None
        return self.observer.seen.first_state_wall + sim_s / self.sched.speed

    @property
    def service(self) -> Instance:
        return self.instances[-1]

    # -- processes ------------------------------------------------------------------------
    def start_service(self) -> Instance:
        assert self.config is not None
        n = len(self.instances) + 1
        log = self.out / f"service-{n}.log"
        # The state directory systemd would give it (StateDirectory=): a restarted instance
        # finds the plan seq and the programs its predecessor pushed there.
        state = self.out / "state"
        state.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        env["STATE_DIRECTORY"] = str(state)
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                [str(ATSC), "serve", "--config", str(self.config), "--broker",
                 f"127.0.0.1:{self.broker.port}", "--metrics-port", str(self.metrics_port)],
                cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env)
        inst = Instance(n, proc, log, time.time())
        self.instances.append(inst)
        self.note("service started", instance=n, pid=proc.pid)
        return inst

    def start_field(self) -> None:
        env = dict(os.environ)
        silence = self.sched.silence_env()
        if silence:
            env["ATSC_FIELD_SILENCE"] = silence
        cmd = [str(ATSC), "field", self.args.scenario, "--broker",
               f"127.0.0.1:{self.broker.port}", "--speed", f"{self.sched.speed:g}",
               "--end", f"{self.sched.sim_s:g}", "--out", str(self.out / "field")]
        with (self.out / "field.log").open("wb") as sink:
            self.field = subprocess.Popen(cmd, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=env)
        self.note("field started", cmd=" ".join(cmd[1:]), silence=silence)

    async def scrape_now(self, inst: Instance) -> dict[str, float] | None:
        got = await asyncio.to_thread(scrape, self.metrics_port)
        if got is not None and inst.proc.poll() is None:
            inst.scrapes.append((time.time(), got))
        return got

    # -- background ---------------------------------------------------------------------
    async def sample(self, stop: asyncio.Event) -> None:
        last_scrape = 0.0
        while not stop.is_set():
            async with self._lock:
                inst = self.service
                rc = inst.proc.poll()
                if rc is None:
                    now = time.time()
                    kb = _rss_kb(inst.proc.pid)
                    if kb is not None:
                        inst.rss.append((now, kb))
                        inst.children_rss.append((now, _descendants_rss_kb(inst.proc.pid)))
                    if now - last_scrape >= SCRAPE_PERIOD_S:
                        last_scrape = now
                        await self.scrape_now(inst)
                elif inst.deliberate is None:
                    inst.ended, inst.exit_code = time.time(), rc
                    self.crashes.append({"instance": inst.n, "exit_code": rc,
                                         "ts": inst.ended,
                                         "log_tail": inst.log.read_text(errors="replace")[-2000:]})
                    self.note("SERVICE CRASHED", instance=inst.n, exit_code=rc)
                    await asyncio.sleep(1.0)  # Restart=on-failure, RestartSec=1
                    self.start_service()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RSS_PERIOD_S)

    # -- faults ---------------------------------------------------------------------------
    async def until(self, sim_s: float) -> None:
        delay = self.wall_of(sim_s) - time.time()
        if delay > 0:
            await asyncio.sleep(delay)

    async def broker_outage(self, name: str, down_s: float) -> None:
        ev = self.note(f"{name}: broker SIGKILL", down_s=down_s)
        self.broker.kill()
        await asyncio.sleep(down_s)
        self.broker.restart()
        ev["restarted"] = time.time()
        self.note(f"{name}: broker restarted", port=self.broker.port)

    async def garbage(self) -> None:
        inst = self.service
        # QoS 0 readings reach only a connected service: wait for it (after a broker restart).
        deadline = time.time() + 60
        while time.time() < deadline:
            before = await self.scrape_now(inst)
            if _metric(before, "atsc_mqtt_connected") == 1:
                break
            await asyncio.sleep(0.5)
        det = GARBAGE_DETECTOR
        topic = topic_for(J, TopicKind.DETECTOR, det)
        sent: Counter[str] = Counter()
        assert self.observer is not None
        # The field's last seq and ts, taken once before the burst: the observer also sees
        # the garbage, and no garbage seq may ever be above what the field has sent (the
        # gate would admit it and then refuse the field's own readings as replays).
        seq, ts = self.observer.seen.det_last.get(det, (0, time.time()))
        async with aiomqtt.Client("127.0.0.1", self.broker.port,
                                  identifier=f"{J}/det/{det}") as c:
            for i in range(self.sched.garbage_repeats):
                now = time.time()
                good = DetectorReading(det, now, seq, count=0, occupancy=0.0, presence=False)
                raw = json.loads(encode_reading(good))
                items: list[tuple[str, str, bytes]] = [
                    ("malformed_json", topic, b'{"ts": ' + str(now).encode() + b', "seq":'),
                    ("oversized", topic, b'{"pad": "' + b"x" * 4000 + b'"}'),
                    ("unknown_detector", topic_for(J, TopicKind.DETECTOR, f"X{i % 7}_zz"),
                     encode_reading(good)),
                    ("bad_topic", f"atsc/{J}/det/bad id", encode_reading(good)),
                    ("schema", topic, json.dumps({**raw, "lane": 3}).encode()),  # unknown field
                    ("out_of_range", topic, json.dumps({**raw, "occupancy": 7.5}).encode()),
                    ("future_timestamp", topic, json.dumps({**raw, "ts": now + 3600}).encode()),
                    ("stale_timestamp", topic, json.dumps({**raw, "ts": now - 3600}).encode()),
                    ("malformed_state", topic_for(J, TopicKind.STATE), b"\xff\xfe not json"),
                    ("malformed_ack", topic_for(J, TopicKind.PLAN_ACK), b"[1, 2"),
                    ("json_bomb", topic, b"[" * 500 + b"]" * 500),
                    ("nan", topic, json.dumps({**raw, "occupancy": float("nan")}).encode()),
                ]
                if seq - 5 > RESTART_MAX_SEQ:
                    # A seq below the last one the field sent, above restart_max_seq (so
                    # not a detector restart): never above it, or the gate would take it
                    # and refuse the field's next readings.
                    items.append(("replay", topic, json.dumps(
                        {**raw, "seq": seq - 5, "ts": ts - 0.5}).encode()))
                    items.append(("duplicate_or_replay", topic, json.dumps(
                        {**raw, "seq": seq, "ts": ts}).encode()))
                for kind, t, payload in items:
                    await c.publish(t, payload, qos=1)  # acknowledged by the broker
                    sent[kind] += 1
                await asyncio.sleep(random.uniform(0.0, 0.02))
        ev = self.note("garbage burst sent", total=sum(sent.values()), by_kind=dict(sent))
        await asyncio.sleep(2 * SCRAPE_PERIOD_S)
        after = await self.scrape_now(inst)
        ev.update(before=before, after=after, instance=inst.n,
                  service_alive=inst.proc.poll() is None, sent=dict(sent))

    async def crash(self) -> None:
        seen = self.observer.seen if self.observer else Observed()
        deadline = self.wall_of(self.sched.crash_latest)
        while time.time() < deadline and (not seen.states or seen.states[-1]["fallback"]):
            await asyncio.sleep(0.2)
        running = seen.states[-1] if seen.states else None
        async with self._lock:
            inst = self.service
            await self.scrape_now(inst)
            inst.deliberate = "SIGKILL"
            inst.proc.send_signal(signal.SIGKILL)
            inst.exit_code = await asyncio.to_thread(inst.proc.wait, 10)
            inst.ended = time.time()
        ev = self.note("service SIGKILL", instance=inst.n, exit_code=inst.exit_code,
                       field_running=None if running is None else running["program_id"],
                       field_in_fallback=None if running is None else running["fallback"])
        await asyncio.sleep(self.sched.crash_down_s)
        async with self._lock:
            new = self.start_service()
        ev["restarted"] = new.started

    async def sigterm(self) -> None:
        async with self._lock:
            inst = self.service
            await self.scrape_now(inst)
            inst.deliberate = "SIGTERM"
            t = time.time()
            inst.proc.send_signal(signal.SIGTERM)
            try:
                inst.exit_code = await asyncio.to_thread(inst.proc.wait, 30)
            except subprocess.TimeoutExpired:
                inst.proc.kill()
                inst.exit_code = await asyncio.to_thread(inst.proc.wait, 10)
            inst.ended = time.time()
            inst.stop_s = inst.ended - t
        self.note("service SIGTERM", instance=inst.n, exit_code=inst.exit_code,
                  stop_s=round(inst.stop_s, 2))

    async def faults(self) -> None:
        plan: list[tuple[float, str]] = sorted((self.sched.at(f), f) for f in self.sched.faults)
        for sim_s, f in plan:
            await self.until(sim_s)
            if self.field is not None and self.field.poll() is not None:
                self.note(f"{f} skipped: the field has ended")
                continue
            if f == "broker1":
                await self.broker_outage(f, self.sched.broker1_down_s)
            elif f == "broker2":
                await self.broker_outage(f, self.sched.broker2_down_s)
            elif f == "garbage":
                await self.garbage()
            elif f == "outage":
                self.note("detector outage begins (field ATSC_FIELD_SILENCE)",
                          detectors=list(OUTAGE_DETECTORS), until_sim_s=self.sched.outage_end)
            elif f == "crash":
                await self.crash()
            elif f == "sigterm":
                await self.sigterm()

    # -- the run --------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        self.t_start = time.time()
        self.broker.start()
        self.note("broker started", port=self.broker.port)
        stop = asyncio.Event()
        self.observer = Observer(self.broker.port)
        observer = asyncio.create_task(self.observer.run(stop))
        self.start_field()
        assert self.field is not None
        fallback_file = self.out / "field" / "fallback.json"
        deadline = time.time() + 120
        while not fallback_file.is_file() or not fallback_file.read_text().endswith("\n"):
            if self.field.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"field did not write {fallback_file}; see field.log")
            await asyncio.sleep(0.1)
        self.config = service_config(self.out / "service.toml", fallback_file,
                                     self.broker.port, self.metrics_port,
                                     evaluator=self.args.evaluator, margin=self.args.margin)
        self.start_service()
        while self.observer.seen.first_state_wall is None:
            if self.field.poll() is not None or time.time() > deadline:
                raise RuntimeError("no state from the field; see field.log")
            await asyncio.sleep(0.1)
        self.note("first state from the field (sim second 0 of the schedule)")
        sampler = asyncio.create_task(self.sample(stop))
        faults = asyncio.create_task(self.faults())
        timeout = self.sched.sim_s / self.sched.speed * 3 + 300
        field_rc = await asyncio.to_thread(self.field.wait, timeout)
        self.note("field ended", exit_code=field_rc)
        if not faults.done():
            faults.cancel()
            await asyncio.gather(faults, return_exceptions=True)
        else:
            faults.result()
        async with self._lock:
            inst = self.service
            if inst.proc.poll() is None:
                await self.scrape_now(inst)
        if inst.proc.poll() is None:
            await self.sigterm()  # "sigterm" not in the schedule: stop it cleanly anyway
        stop.set()
        await asyncio.gather(sampler, observer, return_exceptions=True)
        self.broker.stop()
        hil = json.loads((self.out / "field" / "hil.json").read_text())
        return analyse(self, hil, field_rc)


# -- analysis ---------------------------------------------------------------------------------


def _first(items: list[dict[str, Any]], after: float, key: str = "ts",
           **match: Any) -> dict[str, Any] | None:
    for it in items:
        if it[key] >= after and all(it.get(k) == v for k, v in match.items()):
            return it
    return None


def _running_at(seen: Observed, t: float) -> str:
    before = [s for s in seen.states if s["ts"] <= t]
    if not before:
        return "its start-up program"
    s = before[-1]
    return f"{'the fallback ' if s['fallback'] else 'plan '}{s['program_id']}"


def _secs(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(b - a, 2)


def _last_scrape(inst: Instance) -> dict[str, float]:
    return inst.scrapes[-1][1] if inst.scrapes else {}


def _metric(s: dict[str, float] | None, name: str) -> float:
    return 0.0 if s is None else s.get(name, 0.0)


def _by_label(s: dict[str, float] | None, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in (s or {}).items():
        if k.startswith(name + "{"):
            out[k[len(name) + 1:-1].split('"')[1]] = v
    return out


def _outage_healthy(soak: Soak, t0: float, t1: float) -> list[tuple[float, int]]:
    """(scrape time, how many of the silenced loop detectors the service calls healthy)."""
    loops = [d for d in OUTAGE_DETECTORS if not d.endswith("_q")]  # queues chatter anyway
    out = []
    for inst in soak.instances:
        for t, s in inst.scrapes:
            if t0 <= t <= t1:
                h = _by_label(s, "atsc_detector_healthy")
                out.append((t, sum(int(h.get(d, 0)) for d in loops)))
    return out


def analyse(soak: Soak, hil: dict[str, Any], field_rc: int) -> dict[str, Any]:
    seen = soak.observer.seen if soak.observer else Observed()
    sched = soak.sched
    speed = sched.speed
    fb_events = hil.get("fallback", {}).get("events", [])
    entered = [e for e in fb_events if e["event"] == "entered"]
    left = [e for e in fb_events if e["event"] == "left"]
    accepted = [a for a in seen.acks if a["status"] == "accepted"]
    online = [s for s in seen.statuses if s["state"] == "online"]
    rows: list[dict[str, Any]] = []

    def ev(name: str) -> dict[str, Any] | None:
        return next((e for e in soak.events if e["event"].startswith(name)), None)

    for name in ("broker1", "broker2"):
        e = ev(f"{name}: broker SIGKILL")
        if e is None or "restarted" not in e:
            continue
        t_kill, t_up = e["ts"], e["restarted"]
        svc = _first(online, t_up)
        state = next((t for t in seen.state_ts if t >= t_up), None)
        plan = _first(seen.plans, t_up)
        fb_in = [x for x in entered if t_kill <= x["ts"] <= t_up + 30]
        rec = max(x for x in (_secs(t_up, svc["ts"] if svc else None),
                              _secs(t_up, state)) if x is not None) if (svc or state) else None
        what = (f"broker down {t_up - t_kill:.1f} s; service status online again "
                f"{_secs(t_up, svc['ts'] if svc else None)} s after restart, field states "
                f"again after {_secs(t_up, state)} s; next plan "
                f"{_secs(t_up, plan['ts'] if plan else None)} s after restart; "
                + (f"fallback entered: {[x['reason'] for x in fb_in]}" if fb_in else
                   f"no fallback entered: the field kept running {_running_at(seen, t_kill)}"))
        rows.append({"fault": f"broker SIGKILL + restart ({name})", "at": t_kill,
                     "what": what, "recover_s": rec,
                     "detail": {"down_s": round(t_up - t_kill, 2), "fallback": fb_in}})

    e = ev("garbage burst sent")
    if e is not None:
        rej_b = _by_label(e.get("before"), "atsc_messages_rejected_total")
        rej_a = _by_label(e.get("after"), "atsc_messages_rejected_total")
        delta = {k: rej_a.get(k, 0) - rej_b.get(k, 0) for k in rej_a
                 if rej_a.get(k, 0) - rej_b.get(k, 0)}
        fb_in = [x for x in entered if e["ts"] - 5 <= x["ts"] <= e["ts"] + 30]
        what = (f"{e['total']} messages; service "
                f"{'alive' if e['service_alive'] else 'DEAD'}, rejected {delta}; detectors "
                f"faulty {_metric(e.get('before'), 'atsc_detectors_faulty'):g} -> "
                f"{_metric(e.get('after'), 'atsc_detectors_faulty'):g}; "
                + ("no fallback" if not fb_in else f"fallback {fb_in}"))
        rows.append({"fault": "garbage burst on detector topics", "at": e["ts"], "what": what,
                     "recover_s": 0.0 if e["service_alive"] else None,
                     "detail": {"sent": e["sent"], "rejected_delta": delta}})

    e = ev("detector outage begins")
    if e is not None:
        t0 = soak.wall_of(sched.at("outage"))
        t1 = soak.wall_of(sched.outage_end)
        n_loops = sum(not d.endswith("_q") for d in OUTAGE_DETECTORS)
        series = _outage_healthy(soak, t0 - SCRAPE_PERIOD_S, t1 + 300)
        noticed = next((t for t, n in series if t >= t0 and n == 0), None)
        healthy = next((t for t, n in series if t >= t1 and n == n_loops), None)
        fb = _first(entered, t0)
        fb = fb if fb is not None and fb["ts"] <= t1 + 5 else None
        plans_during = [p for p in seen.plans if (noticed or t0) + 1 < p["ts"] < t1]
        plan_after = _first(seen.plans, t1)
        back = _first(left, t1)
        rec = _secs(t1, back["ts"]) if fb and back else _secs(t1, plan_after["ts"]
                                                              if plan_after else None)
        what = (f"{len(OUTAGE_DETECTORS)} detectors silent {(t1 - t0):.0f} s wall "
                f"({sched.outage_end - sched.at('outage'):.0f} s sim); service saw them faulty "
                f"after {_secs(t0, noticed)} s (5-s scrapes), {len(plans_during)} plans "
                f"pushed while they were faulty; "
                + (f"field fallback '{fb['reason']}' {_secs(t0, fb['ts'])} s into the outage; "
                   if fb else "no fallback during the outage (lease outlived it); ")
                + f"loop detectors healthy again {_secs(t1, healthy)} s after, next plan "
                f"{_secs(t1, plan_after['ts'] if plan_after else None)} s after"
                + (f", fallback left {_secs(t1, back['ts'])} s after" if fb and back else ""))
        rows.append({"fault": "detector outage (north approach)", "at": t0, "what": what,
                     "recover_s": rec,
                     "detail": {"wall": [t0, t1], "fallback": fb, "plans_during": plans_during}})

    e = ev("service SIGKILL")
    if e is not None and "restarted" in e:
        t_kill, t_up = e["ts"], e["restarted"]
        will = _first(seen.statuses, t_kill - 1, key="recv", state="offline")
        fb = _first(entered, t_kill)
        svc = _first(online, t_up)
        plan = _first(seen.plans, t_up)
        acc = _first(accepted, t_up)
        back = _first(left, t_up)
        what = (f"Last Will 'offline' at the field {_secs(t_kill, will['recv'] if will else None)}"
                f" s after the kill; fallback "
                + (f"'{fb['reason']}' {_secs(t_kill, fb['ts'])} s after the kill; "
                   if fb else "NOT entered"
                   + (" (the field already ran its fallback at the kill); "
                      if e.get("field_in_fallback") else "; "))
                + f"restart after {t_up - t_kill:.1f} s; online "
                f"{_secs(t_up, svc['ts'] if svc else None)} s after restart, first plan "
                f"{_secs(t_up, plan['ts'] if plan else None)} s, "
                f"accepted {_secs(t_up, acc['ts'] if acc else None)} s, fallback left "
                f"{_secs(t_up, back['ts'] if back else None)} s after restart")
        rows.append({"fault": "service SIGKILL + restart", "at": t_kill, "what": what,
                     "recover_s": _secs(t_up, back["ts"] if back else
                                        (svc["ts"] if svc else None)),
                     "detail": {"fallback": fb, "down_s": round(t_up - t_kill, 2),
                                "field_in_fallback_at_kill": e.get("field_in_fallback")}})

    e = ev("service SIGTERM")
    if e is not None:
        t = e["ts"] - (e.get("stop_s") or 0)
        stopping = _first(seen.statuses, t - 1, state="stopping")
        fb = _first(entered, t)
        what = (f"exit code {e['exit_code']} after {e.get('stop_s')} s; status 'stopping' "
                f"published; field fallback "
                + (f"'{fb['reason']}' {_secs(t, fb['ts'])} s after SIGTERM" if fb
                   else "not entered (already in fallback or run ended)"))
        rows.append({"fault": "service SIGTERM (clean stop)", "at": t, "what": what,
                     "recover_s": None, "detail": {"stopping": stopping, "fallback": fb}})

    # -- fallback rules -------------------------------------------------------------------
    checks: list[dict[str, Any]] = []
    windows = {
        "service offline": [(x["ts"], x["restarted"] + 60) for x in soak.events
                            if x["event"] == "service SIGKILL" and "restarted" in x],
        "service stopping": [(x["ts"] - (x.get("stop_s") or 0) - 1, x["ts"] + 60)
                             for x in soak.events if x["event"] == "service SIGTERM"],
        # D2: the service says "degraded" while the silenced detectors are faulty.
        "service degraded": [(soak.wall_of(sched.at("outage")),
                              soak.wall_of(sched.outage_end) + 60)]
        if "outage" in sched.faults else [],
    }
    for x in entered:
        reason = x["reason"]
        ok, why = False, ""
        if reason in windows:
            ok = any(a <= x["ts"] <= b for a, b in windows[reason])
            why = f"follows the {reason!r} event" if ok else "no matching service event"
        elif reason == "lease expired":
            cmds = [p for p in seen.plans if p["ts"] < x["ts"]
                    and any(a["seq"] == p["seq"] for a in accepted)]
            if cmds:
                last = max(cmds, key=lambda p: p["seq"])
                end = last["ts"] + last["lease_s"]
                cyc = last["cycle_s"] / speed
                ok = end - cyc - 1.0 <= x["ts"] <= end + 0.5
                why = (f"last accepted seq {last['seq']} lease end {end - x['ts']:+.1f} s "
                       f"from the switch (plan cycle {cyc:.1f} s wall)")
            else:
                why = "no accepted command seen before"
        else:
            why = "unexpected reason"
        checks.append({"event": "entered", "ts": x["ts"], "sim_s": x["sim_s"],
                       "reason": reason, "ok": ok, "why": why})
    for x in left:
        # Order statuses by when they arrived: a Last Will carries the ts of its client's
        # connect, long before it is published.
        prev = sorted((s for s in seen.statuses if s.get("recv", s["ts"]) <= x["ts"]),
                      key=lambda s: s.get("recv", s["ts"]))
        status_ok = not prev or prev[-1]["state"] == "online"
        acks = [a for a in accepted if a["program_id"] == x["program_id"] and a["ts"] <= x["ts"]]
        checks.append({"event": "left", "ts": x["ts"], "sim_s": x["sim_s"],
                       "program_id": x["program_id"], "ok": bool(acks) and status_ok,
                       "why": f"accepted plan {'seen' if acks else 'NOT seen'}, service "
                              f"{prev[-1]['state'] if prev else 'status unknown'}"})

    # -- figures --------------------------------------------------------------------------
    rss: list[dict[str, Any]] = []
    for inst in soak.instances:
        s = [kb for _, kb in inst.rss]
        if not s:
            continue
        # "Warm": after start-up (imports, twin workers, first decisions): 1/5 of its life.
        warm = s[len(s) // 5]
        rss.append({"instance": inst.n, "samples": len(s), "start_mb": round(s[0] / 1024, 1),
                    "warm_mb": round(warm / 1024, 1), "end_mb": round(s[-1] / 1024, 1),
                    "max_mb": round(max(s) / 1024, 1),
                    "growth_pct": round(100 * (s[-1] - warm) / warm, 1),
                    "children_max_mb": round(max((kb for _, kb in inst.children_rss),
                                                 default=0) / 1024, 1),
                    "lifetime_s": round(inst.rss[-1][0] - inst.rss[0][0], 1),
                    "ended_by": inst.deliberate, "exit_code": inst.exit_code})
    totals: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    faults_by: Counter[str] = Counter()
    acks_by: Counter[str] = Counter()
    for inst in soak.instances:
        last = _last_scrape(inst)
        totals["plans_pushed"] += int(_metric(last, "atsc_plans_pushed_total"))
        totals["mqtt_reconnects"] += int(_metric(last, "atsc_mqtt_reconnects_total"))
        rejected.update({k: int(v) for k, v in
                         _by_label(last, "atsc_messages_rejected_total").items() if v})
        faults_by.update({k: int(v) for k, v in
                          _by_label(last, "atsc_detector_faults_total").items() if v})
        acks_by.update({k: int(v) for k, v in _by_label(last, "atsc_plan_acks_total").items()})
    faulty_series = [n for inst in soak.instances for _, s in inst.scrapes
                     for n in [_metric(s, "atsc_detectors_faulty")]]
    figures = {
        "unsafe_states": hil.get("monitor_faults", 0) + hil.get("field_monitor_faults", 0),
        "monitor_faults": hil.get("monitor_faults"),
        "field_monitor_faults": hil.get("field_monitor_faults"),
        "collisions_seen": hil.get("collisions_seen"),
        "field_exit_code": field_rc,
        "service_crashes_from_input": len(soak.crashes),
        "service_instances": len(soak.instances),
        "service_exit_codes": [(i.n, i.deliberate, i.exit_code) for i in soak.instances],
        "fallback_entered": len(entered), "fallback_left": len(left),
        "fallback_reasons": dict(Counter(x["reason"] for x in entered)),
        "fallback_seconds": hil.get("fallback", {}).get("seconds"),
        "fallback_checks_ok": all(c["ok"] for c in checks),
        "rss": rss,
        "rss_max_mb": max((r["max_mb"] for r in rss), default=None),
        "rss_growth_max_pct": max((r["growth_pct"] for r in rss), default=None),
        "messages_rejected": dict(rejected),
        "plans_pushed": totals["plans_pushed"],
        "plan_acks": dict(acks_by),
        "plans_seen_on_broker": len(seen.plans),
        "field_plans": hil.get("plans", {}),
        "mqtt_reconnects": totals["mqtt_reconnects"],
        "field_connects": hil.get("connection", {}).get("connects"),
        "detector_faults": dict(faults_by),
        "detectors_faulty_median": (sorted(faulty_series)[len(faulty_series) // 2]
                                    if faulty_series else None),
        "pacing": hil.get("pacing"),
        "silence": hil.get("silence"),
        "observer_bad_messages": seen.bad[:20],
    }
    return {
        "scenario": soak.args.scenario, "sim_s": sched.sim_s, "speed": speed,
        "evaluator": soak.args.evaluator, "faults": list(sched.faults),
        "command": " ".join([".venv/bin/python", "bench/soak.py", *sys.argv[1:]]),
        "wall_s": round(time.time() - soak.t_start, 1),
        "fault_table": rows, "figures": figures, "fallback_checks": checks,
        "events": soak.events, "crashes": soak.crashes,
        "observed": {"states": seen.states, "statuses": seen.statuses, "plans": seen.plans,
                     "acks": seen.acks},
        "rss_samples": {i.n: i.rss for i in soak.instances},
        "out": str(soak.out),
    }


def print_report(r: dict[str, Any]) -> None:
    f = r["figures"]
    print(f"\nsoak: {r['scenario']} {r['sim_s']:.0f} simulated s at speed {r['speed']:g} "
          f"({r['wall_s']:.0f} s wall), evaluator {r['evaluator']}")
    print("\n| fault | what happened | time to recover |\n|---|---|---|")
    for row in r["fault_table"]:
        rec = "-" if row["recover_s"] is None else f"{row['recover_s']:.1f} s"
        print(f"| {row['fault']} | {row['what']} | {rec} |")
    print("\n| figure | value |\n|---|---|")
    lines = [
        ("unsafe states (monitor faults: controller + field)",
         f"{f['unsafe_states']} ({f['monitor_faults']} + {f['field_monitor_faults']})"),
        ("service crashes caused by input", f["service_crashes_from_input"]),
        ("service instances / exit codes", f["service_exit_codes"]),
        ("fallback entered / left", f"{f['fallback_entered']} / {f['fallback_left']}"),
        ("fallback reasons", f["fallback_reasons"]),
        ("fallback entries/exits as the rules say", f["fallback_checks_ok"]),
        ("RSS per instance (MB: start, warm, end, max; growth warm->end)",
         "; ".join(f"#{x['instance']}: {x['start_mb']}, {x['warm_mb']}, {x['end_mb']}, "
                   f"{x['max_mb']} ({x['growth_pct']:+.1f} % over {x['lifetime_s']:.0f} s; "
                   f"twin workers max {x['children_max_mb']})" for x in f["rss"])),
        ("messages rejected by reason", f["messages_rejected"]),
        ("plans pushed (service) / acks", f"{f['plans_pushed']} / {f['plan_acks']}"),
        ("field plans", {k: v for k, v in f["field_plans"].items() if k != "reject_reasons"}),
        ("MQTT reconnects (service) / field connects",
         f"{f['mqtt_reconnects']} / {f['field_connects']}"),
        ("detector faults (transitions)", f["detector_faults"]),
        ("pacing", f["pacing"]),
    ]
    for k, v in lines:
        print(f"| {k} | {v} |")
    print("\nfallback episodes:")
    for c in r["fallback_checks"]:
        print(f"  {'ok ' if c['ok'] else 'BAD'} {c['event']:7} sim {c['sim_s']:>6} "
              f"{c.get('reason', c.get('program_id'))}: {c['why']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--scenario", default="midday")
    ap.add_argument("--sim-s", type=float, default=3600.0, help="simulated seconds (0..S)")
    ap.add_argument("--speed", type=float, default=4.0)
    ap.add_argument("--quick", action="store_true", help="600 simulated s (10 min)")
    ap.add_argument("--evaluator", choices=("sumo", "analytic"), default="sumo")
    ap.add_argument("--faults", default="all",
                    help=f"comma-separated subset of {','.join(FAULTS)} (default all)")
    ap.add_argument("--margin", type=float, default=0.03,
                    help="[controller] margin of the service; 0 pushes every better plan, "
                         "so the field runs the service's plans whenever faults strike")
    ap.add_argument("--out", type=Path, default=REPO / "out" / "soak")
    ap.add_argument("--json", type=Path, default=None, help="default <out>/soak.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.sim_s = 600.0
    args.faults = FAULTS if args.faults == "all" else tuple(
        f for f in (x.strip() for x in args.faults.split(",")) if f)
    unknown = set(args.faults) - set(FAULTS)
    if unknown:
        ap.error(f"unknown fault(s) {sorted(unknown)}; choose from {FAULTS}")
    soak = Soak(args)
    try:
        report = asyncio.run(soak.run())
    finally:
        for inst in soak.instances:
            if inst.proc.poll() is None:
                inst.proc.kill()
        if soak.field is not None and soak.field.poll() is None:
            soak.field.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                soak.field.wait(20)
        soak.broker.kill()
    path = args.json or soak.out / "soak.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print_report(report)
    print(f"\njson: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
