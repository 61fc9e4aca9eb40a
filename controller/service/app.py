"""``atsc serve``: the live service for one junction (asyncio shell around the sans-I/O core).

Threads and what runs where:

- the event loop: MQTT (``MqttTransport``: ingest gate, publishing), the
  ingest task, the once-per-second control loop, decision evaluations
  (awaiting the twin's futures), sd_notify, signals;
- one core thread: every call into ``AdaptiveCore`` and its perception
  (readings, states, acks, ``advance``, ``complete``), so the core is never
  touched by two threads and never runs on the loop;
- the twin's worker processes (``controller.twin.SumoTwin``), or, for the
  analytic evaluator, one evaluator thread;
- prometheus_client's HTTP server thread.

Ingest: admitted messages go to the core thread as they arrive (the ingest
task wakes on every arrival and hands over whatever is buffered), so a
reading reaches the estimator within milliseconds, decisions or not.

Decisions are split (docs/adaptive.md): each second the control loop hands
the core thread ``advance(now)`` (after the last buffered messages, the order
of ``transport.exchange``); an epoch that starts returns an evaluation job,
whose snapshot and programs go to the twin's worker processes.  The core
thread is free meanwhile.  When the scores arrive (or the time limit ends the
evaluation) the core thread runs ``complete``: margin, safety gate, lease;
stale scores (another running program, the switch point passed) are dropped.
The systemd watchdog is pinged from the control loop only while a core step is
not overdue, so a hung loop or a hung core thread both stop the pings.

Start-up (safety.md D5): the core's decisions start, ``READY=1`` is sent and
``service/status`` becomes ``online`` only once enough detectors are healthy
and a fresh hardware state has been seen.  Before that, the programs the
previous process pushed (``PLANS_FILE`` in the state directory) are made known
to the core again, so a plan the hardware still runs after a restart is scored
and renewed or replaced rather than unknown.  SIGTERM: stop pushing, publish
``stopping`` (the hardware returns to its fallback program at its next switch
point), flush, exit 0.  Behaviour and configuration: docs/service.md.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import logging
import math
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any, Final

from prometheus_client import Histogram, start_http_server

from controller.adaptive import (
    AdaptiveConfig,
    AdaptiveCore,
    AnalyticEvaluator,
    Decision,
    DetectorPerception,
    EstimateSnapshots,
    EvaluationFailed,
    EvaluationJob,
    EvaluationResult,
    SnapshotSource,
    scores_by_program,
)
from controller.errors import ConfigError
from controller.estimator import Estimate
from controller.health import Degradation, Fault
from controller.messages import (
    AckStatus,
    DetectorReading,
    HardwareState,
    PlanAck,
    PlanCommand,
)
from controller.metrics import Metrics
from controller.plans import SignalProgram, StagePlan, compile_plan
from controller.safety import validate
from controller.service.config import ServiceConfig, load_config
from controller.service.mqtt import Arrival, MqttTransport
from controller.service.notify import Notifier
from controller.transport import advance, complete, dispatch
from controller.wire import (
    ReadingGate,
    Rejected,
    ServiceState,
    decode_plan,
    encode_plan,
    parse_json,
)

log = logging.getLogger("atsc.service")

#: The control loop's period: the core's clock advances once per second.
PERIOD_S: Final = 1.0
#: After the first message of an ingest batch arrives, wait this long for more before
#: handing the batch to the core thread (fewer thread hand-overs at high rates).
INGEST_GATHER_S: Final = 0.002
#: Estimates for the queue/delay/flow gauges are refreshed this often.
ESTIMATE_EVERY_S: Final = 5.0
#: Twin worker processes run this much nicer than the service: on a loaded host the
#: twin waits for CPU, not the ingest (a decision has seconds of lead, a reading 50 ms).
TWIN_NICE: Final = 10
#: SIGTERM to exit: publishing the final status gets this much of it.
STATUS_FLUSH_S: Final = 2.0
#: Remembered published commands (lease tracking from acks).
_PUBLISHED_KEPT: Final = 64
SEQ_FILE: Final = "last_plan_seq"
#: The programs of the last pushed plans, as plan commands in the wire format
#: (``save_published``), so a restarted service knows what the hardware still runs.
PLANS_FILE: Final = "published_plans.jsonl"
#: Distinct programs kept in ``PLANS_FILE`` (the newest; renewals repeat one program).
PLANS_KEPT: Final = 4
#: First line of ``PLANS_FILE``; a file with another header is not ours.
PLANS_FORMAT: Final = "atsc-published-plans/1"
#: A larger ``PLANS_FILE`` is not ours (a plan payload is at most a few KiB).
_PLANS_FILE_MAX_BYTES: Final = 1 << 20


def version() -> str:
    try:
        return metadata.version("atsc")
    except metadata.PackageNotFoundError:
        return "unknown"


# -- building the parts --------------------------------------------------------------------


def load_fallback(cfg: ServiceConfig, signals: Any) -> SignalProgram:
    """The hardware's stored program, from the config; it must pass the safety validator."""
    fb = cfg.fallback
    if fb.program_file is not None:
        try:
            text = fb.program_file.read_bytes()
        except OSError as exc:
            raise ConfigError(f"[fallback] program_file: {exc.strerror}", cfg.source) from exc
        # A program object is the "program" of a plan command: reuse the wire's checks.
        envelope = (b'{"program":' + text.strip() + b',"issued":946684800,'
                    b'"valid_from":946684800,"lease_s":1,"seq":0}')
        decoded = decode_plan(envelope, topic=str(fb.program_file))
        if isinstance(decoded, Rejected):
            raise ConfigError(f"[fallback] program_file {fb.program_file}: {decoded.reason}: "
                              f"{decoded.detail}", cfg.source)
        program = decoded.program
    else:
        assert fb.id is not None
        try:
            program = compile_plan(signals, StagePlan(fb.stages, fb.greens_s, fb.offset_s), fb.id)
        except (ValueError, KeyError) as exc:
            raise ConfigError(f"[fallback] stages/greens_s: {exc}", cfg.source) from exc
    violations = validate(signals, program)
    if violations:
        raise ConfigError(f"[fallback] program {program.id} fails the safety validator: "
                          f"{violations[0].rule} {violations[0].message}", cfg.source)
    return program


class Scorer:
    """Scores a decision's job off the core thread, within the time limit.

    An evaluator with ``submit(snapshot, programs) -> [Future]`` (the SUMO twin:
    one future per program, computed in its worker processes) is awaited
    through its futures; any other runs ``evaluate`` on an evaluator thread.
    One histogram sample per program.  Never raises: a failure or a timeout
    becomes ``EvaluationFailed``, and the core records the decision as failed.
    """

    def __init__(self, inner: Any, histogram: Histogram, timeout_s: float) -> None:
        self.inner = inner
        self.histogram = histogram
        self.timeout_s = timeout_s
        self._thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="atsc-evaluate")

    async def score(self, job: EvaluationJob) -> EvaluationResult:
        programs = list(job.programs)
        try:
            return await asyncio.wait_for(self._score(job.snapshot, programs), self.timeout_s)
        except TimeoutError:
            return EvaluationFailed(f"evaluation exceeded [twin] timeout_s = "
                                    f"{self.timeout_s:g} s")
        except Exception as exc:
            return EvaluationFailed(f"{type(exc).__name__}: {exc}")

    async def _score(self, snapshot: Any, programs: list[SignalProgram]) -> EvaluationResult:
        submit = getattr(self.inner, "submit", None)
        if callable(submit):
            futures: list[concurrent.futures.Future[Any]] = submit(snapshot, programs)
            try:
                scores = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
            finally:
                for f in futures:
                    f.cancel()  # after a timeout: what has not started never will
            for sc in scores:
                wall = getattr(sc, "wall_s", None)
                if isinstance(wall, int | float):
                    self.histogram.observe(wall)
            return scores_by_program(scores)
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        out = await loop.run_in_executor(self._thread, self.inner.evaluate, snapshot, programs)
        each = (time.perf_counter() - started) / max(1, len(programs))
        for _ in programs:
            self.histogram.observe(each)
        return scores_by_program(out)

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)


def _nothing() -> None:
    return None


@dataclass
class Parts:
    core: AdaptiveCore
    perception: DetectorPerception
    close: Callable[[], None]
    #: The evaluator (``SumoTwin`` or ``AnalyticEvaluator``); the service drives it.
    evaluator: Any = None
    warm_up: Callable[[], None] = _nothing
    worker_pids: Callable[[], tuple[int, ...]] = tuple
    #: True when the twin's workers could not lower their priority (they run unniced).
    nice_refused: Callable[[], bool] = bool


def build_parts(cfg: ServiceConfig, model: Any, fallback: SignalProgram,
                first_seq: int) -> Parts:
    """Perception, optimiser and evaluator as ``sim.adaptive_driver`` wires them, for MQTT."""
    from controller.optimiser import capacity_check, propose

    snapshots: SnapshotSource
    close: Callable[[], None] = _nothing
    warm_up: Callable[[], None] = _nothing
    worker_pids: Callable[[], tuple[int, ...]] = tuple
    nice_refused: Callable[[], bool] = bool
    if cfg.twin.evaluator == "sumo":
        from controller.twin import SnapshotBuilder, SumoTwin
        from sim.twin_config import twin_config_from_model

        twin_cfg = replace(
            twin_config_from_model(model, horizon_s=cfg.twin.horizon_s,
                                   pedestrian_weight=cfg.twin.pedestrian_weight),
            startup_delay_s=cfg.twin.startup_delay_s, car_accel_mps2=cfg.twin.car_accel_mps2,
        )
        twin = SumoTwin(twin_cfg, workers=cfg.twin.workers, nice=TWIN_NICE)
        inner: Any = twin
        snapshots = SnapshotBuilder(twin_cfg)
        close, warm_up, worker_pids = twin.close, twin.warm_up, twin.worker_pids
        nice_refused = twin.nice_refused
    else:
        inner = AnalyticEvaluator(model.signals)
        snapshots = EstimateSnapshots()
    from sim.twin_config import pocket_spills_from_model

    perception = DetectorPerception(
        model.signals, model.detectors, snapshots,
        lanes_per_group={
            g.id: max(1, len(model.group_in_lanes.get(g.id, ())))
            for g in model.signals.groups if g.is_vehicular
        },
        turns={g.id: g.label for g in model.signals.groups},
        pockets=pocket_spills_from_model(model),
    )
    c = cfg.controller
    try:
        adaptive = AdaptiveConfig(
            margin=c.margin, min_gain_s=c.min_gain_s, pedestrian_slack_s=c.pedestrian_slack_s,
            lease_cycles=c.lease_cycles,
            decision_lead_s=c.decision_lead_s, max_state_age_s=c.max_state_age_s,
            program_prefix=c.program_prefix,
        )
    except ValueError as exc:
        raise ConfigError(f"[controller] {exc}", cfg.source) from exc
    # The core's own ``evaluate`` (the synchronous path) is not used by the service: it
    # scores jobs through ``Scorer`` without blocking the core thread.
    core = AdaptiveCore(
        model.signals, fallback, perception=perception, proposer=propose, evaluator=inner,
        config=adaptive, timer=time.perf_counter, first_seq=first_seq,
        running_check=capacity_check,
    )
    return Parts(core, perception, close, inner, warm_up, worker_pids, nice_refused)


#: Seconds adaptation must stay forbidden (D2) before the status turns "degraded".
DEGRADED_AFTER_S = 15.0

def state_directory() -> Path | None:
    """systemd's ``StateDirectory=`` (``$STATE_DIRECTORY``, first entry), if any."""
    raw = os.environ.get("STATE_DIRECTORY", "")
    first = raw.split(":")[0]
    return Path(first) if first else None


def first_seq(state_dir: Path | None, now: float) -> int:
    """Start above every seq a predecessor used: the hardware ignores seqs it has seen.

    Unix time in milliseconds grows far faster than one command a minute, so it
    alone works across restarts; the seq persisted in the state directory
    covers a clock that was stepped back.
    """
    seq = int(now * 1000)
    if state_dir is not None:
        with contextlib.suppress(OSError, ValueError):
            seq = max(seq, int((state_dir / SEQ_FILE).read_text().strip()) + 1)
    return seq


def _plans_header(junction: str) -> bytes:
    return json.dumps({"format": PLANS_FORMAT, "junction": junction},
                      separators=(",", ":")).encode()


def save_published(state_dir: Path, junction: str, commands: Sequence[PlanCommand]) -> Path:
    """Write ``commands`` (oldest first) to ``PLANS_FILE`` atomically; raises ``OSError``.

    One JSON line of header (format, junction), then one line per command: the
    exact ``encode_plan`` payload.  Written to a temporary file, synced, and
    renamed over the old one, so a crash leaves the old file or the new one.
    """
    path = state_dir / PLANS_FILE
    data = b"\n".join([_plans_header(junction), *(encode_plan(c) for c in commands)]) + b"\n"
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return path


def _parse_published(data: bytes, junction: str, where: str) -> list[PlanCommand]:
    """The commands of a ``PLANS_FILE``; ``ValueError`` says why the file is not usable."""
    if len(data) > _PLANS_FILE_MAX_BYTES:
        raise ValueError(f"larger than {_PLANS_FILE_MAX_BYTES} bytes")
    lines = data.splitlines()
    if not lines:
        raise ValueError("empty")
    header = parse_json(lines[0])  # ValueError (UnicodeDecodeError, JSONDecodeError) if not JSON
    if not isinstance(header, dict) or header.get("format") != PLANS_FORMAT:
        raise ValueError(f"not a {PLANS_FORMAT} file")
    if header.get("junction") != junction:
        raise ValueError(f"written for junction {header.get('junction')!r}, not {junction!r}")
    commands: list[PlanCommand] = []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cmd = decode_plan(line, topic=f"{where}:{n}")
        if isinstance(cmd, Rejected):
            raise ValueError(f"line {n}: {cmd.reason}: {cmd.detail}")
        commands.append(cmd)
    # The newest command of each program, oldest program first, at most PLANS_KEPT.
    newest = {c.program.id: c for c in commands}
    ordered = [c for c in commands if newest[c.program.id] is c]
    return ordered[-PLANS_KEPT:]


def load_published(state_dir: Path | None, junction: str) -> list[PlanCommand]:
    """The commands ``save_published`` kept for ``junction`` (oldest first); never raises.

    No state directory or no file (a first start): ``[]``.  An unreadable,
    corrupt or foreign file (another format or junction, a plan the wire
    contract rejects): ``[]`` and one warning.  The programs are not checked
    here against the safety rules: ``AdaptiveCore.adopt`` does that.
    """
    if state_dir is None:
        return []
    path = state_dir / PLANS_FILE
    try:
        with path.open("rb") as f:
            data = f.read(_PLANS_FILE_MAX_BYTES + 1)
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.warning("ignoring %s: cannot read it (%s); programs pushed before the restart "
                    "stay unknown", path, exc.strerror or exc)
        return []
    try:
        return _parse_published(data, junction, str(path))
    except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep
        log.warning("ignoring %s: %s; programs pushed before the restart stay unknown",
                    path, exc)
        return []


# -- one step of the core (runs on the core thread) -------------------------------------------


@dataclass
class Ingested:
    """What a batch of inbound messages told the event loop's bookkeeping."""

    states: list[HardwareState] = field(default_factory=list)
    acks: list[PlanAck] = field(default_factory=list)
    newest_ts: dict[str, float] = field(default_factory=dict)


@dataclass
class StepResult:
    commands: list[PlanCommand]
    decisions: list[Decision]
    faulty: Mapping[str, Fault]
    degradation: Degradation
    estimate: Estimate | None
    rejected_by_rule: Counter[str]
    inbound: Ingested = field(default_factory=Ingested)
    #: The evaluation job of an epoch that started in this step.
    job: EvaluationJob | None = None


@dataclass
class Completed:
    commands: list[PlanCommand]
    decisions: list[Decision]
    rejected_by_rule: Counter[str]


class Service:
    """One junction's live service; ``run`` returns the exit code."""

    def __init__(self, cfg: ServiceConfig, model: Any, fallback: SignalProgram, *,
                 notifier: Notifier | None = None, clock: Callable[[], float] = time.time
                 ) -> None:
        self.cfg = cfg
        self.model = model
        self.fallback = fallback
        self.clock = clock
        self.version = version()
        self.notifier = notifier or Notifier()
        self.metrics = Metrics(version=self.version)
        self.detector_ids = tuple(d.id for d in model.detectors)
        self.approach_ids = frozenset(a.id for a in model.approaches)
        self.metrics.pre_initialise(self.detector_ids, sorted(self.approach_ids))
        for det in self.detector_ids:
            # No reading yet: infinitely old, so the stale-data alert sees it.
            self.metrics.detector_data_age_seconds.labels(detector=det).set(math.inf)
        self.metrics.fallback_active.set(1)
        self.state_dir = state_directory()
        # Everything that can refuse the configuration comes before the twin, which holds
        # a scratch directory and worker processes once built.
        d = cfg.detectors
        try:
            self.gate = ReadingGate(
                {info.id: info for info in model.detectors}, cfg.junction.name,
                max_payload_bytes=d.max_payload_bytes, max_future_s=d.max_future_s,
                max_age_s=d.max_age_s, restart_max_seq=d.restart_max_seq,
            )
        except ValueError as exc:
            raise ConfigError(f"{cfg.source}: junction {cfg.junction.path}: {exc}") from exc
        self.transport = MqttTransport(
            cfg.mqtt, cfg.junction.name, self.gate, self.metrics, version=self.version,
            max_age_s=d.max_age_s, max_future_s=d.max_future_s, clock=clock,
            on_published=self._on_published, signal_groups=len(model.signals.group_ids),
        )
        self.parts = build_parts(cfg, model, fallback,
                                 first_seq(self.state_dir, clock()))
        self.core = self.parts.core
        self._core_thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="atsc-core")
        self.scorer = Scorer(self.parts.evaluator, self.metrics.twin_evaluation_duration_seconds,
                             cfg.twin.timeout_s)
        self._evaluations: set[asyncio.Task[None]] = set()
        self.ready = False
        self.stopping = False
        self._programs: dict[str, SignalProgram] = {fallback.id: fallback}
        self._published: dict[int, PlanCommand] = {}
        self._lease_until: float | None = None
        self._lease_seq = -1
        self._state: HardwareState | None = None
        self._newest_ts: dict[str, float] = {}
        self._faulty: Mapping[str, Fault] = {d: Fault.STALE for d in self.detector_ids}
        self._rule_counts: Counter[str] = Counter()
        self._last_estimate = -math.inf
        self._status_text = ""
        self._unknown_program_logged: set[str] = set()
        self._announced: ServiceState | None = None
        self._degraded_since: float | None = None
        self._http: Any = None
        #: The last PLANS_KEPT distinct programs pushed (their newest command), oldest first,
        #: and the program ids PLANS_FILE holds now.
        self._recent: list[PlanCommand] = []
        self._recent_saved: tuple[str, ...] = ()
        self._restore_programs()

    # -- wiring callbacks ----------------------------------------------------------------
    def _on_published(self, cmd: PlanCommand) -> None:
        self._published_cmd(cmd)
        if self.state_dir is not None:
            path = self.state_dir / SEQ_FILE
            try:
                tmp = path.with_suffix(".tmp")
                tmp.write_text(f"{cmd.seq}\n")
                tmp.replace(path)
            except OSError as exc:
                log.warning("cannot persist the plan seq in %s: %s", path, exc)

    def _restore_programs(self) -> None:
        """Make the programs a predecessor pushed known again (core and bookkeeping).

        After a restart the hardware may still run the last plan the previous
        process pushed; knowing it, the first epoch scores it and renews or
        replaces it.  Only programs the core adopts (they pass the safety
        validator) are used.  Runs in ``__init__``, before the core thread exists.
        """
        commands = load_published(self.state_dir, self.cfg.junction.name)
        if not commands or self.state_dir is None:
            return
        self._recent_saved = tuple(c.program.id for c in commands)
        adoption = self.core.adopt(c.program for c in commands)
        for program_id, why in adoption.refused:
            log.warning("program %r from %s not adopted: %s", program_id,
                        self.state_dir / PLANS_FILE, why)
        adopted = {p.id for p in adoption.adopted}
        self._recent = [c for c in commands if c.program.id in adopted]
        for program in adoption.adopted:
            self._programs[program.id] = program
        if adoption.adopted:
            log.info("known again from before the restart: program(s) %s",
                     ", ".join(p.id for p in adoption.adopted))

    def _persist_program(self, cmd: PlanCommand) -> None:
        """Keep ``cmd``'s program in ``PLANS_FILE`` before the command can reach the hardware.

        Written only when the kept programs change (a new program, not a renewal
        of the newest), so the state directory sees one write per new plan.
        """
        recent = [c for c in self._recent if c.program.id != cmd.program.id] + [cmd]
        self._recent = recent[-PLANS_KEPT:]
        ids = tuple(c.program.id for c in self._recent)
        if self.state_dir is None or ids == self._recent_saved:
            return
        try:
            save_published(self.state_dir, self.cfg.junction.name, self._recent)
        except (OSError, ValueError) as exc:
            log.warning("cannot persist the pushed programs in %s: %s",
                        self.state_dir / PLANS_FILE, exc)
            return
        self._recent_saved = ids

    def _published_cmd(self, cmd: PlanCommand) -> None:
        self._published[cmd.seq] = cmd
        self._programs[cmd.program.id] = cmd.program
        while len(self._published) > _PUBLISHED_KEPT:
            del self._published[min(self._published)]
        while len(self._programs) > _PUBLISHED_KEPT:
            oldest = next(k for k in self._programs if k != self.fallback.id)
            del self._programs[oldest]

    # -- calls into the core (core thread) -------------------------------------------------
    def _ingest(self, batch: list[Arrival]) -> Ingested:
        """Hand a batch of admitted messages to the core, each with its own arrival time."""
        handed = time.perf_counter()
        hist = self.metrics.ingest_latency_seconds
        out = Ingested()
        for a in batch:
            msg = a.message
            if isinstance(msg, DetectorReading):
                hist.observe(max(0.0, handed - a.arrived))
                prev = out.newest_ts.get(msg.detector_id, msg.ts)
                out.newest_ts[msg.detector_id] = max(msg.ts, prev)
            elif isinstance(msg, HardwareState):
                out.states.append(msg)
            else:
                out.acks.append(msg)
            # Each message with its own arrival time: one that waited in the buffer is
            # as fresh as when it came (health would otherwise see gaps).
            dispatch(self.core, [msg], a.received)
        return out

    def _new_decisions(self, recorded_before: int) -> list[Decision]:
        n_new = self.core.stats.recorded - recorded_before
        return list(self.core.decisions)[-n_new:] if n_new > 0 else []

    def _step(self, batch: list[Arrival], now: float, decide: bool,
              running: SignalProgram, want_estimate: bool) -> StepResult:
        inbound = self._ingest(batch)
        before = self.core.stats.recorded
        job = None
        if decide:
            step = advance(self.core, now)
            commands, job = step.commands, step.job
        else:
            # Before readiness only health advances; no decision epoch may run (D5).
            self.parts.perception.tick(now)
            commands = []
        estimate = None
        if want_estimate:
            try:
                estimate = self.parts.perception.estimate(now, running)
            except Exception:  # metrics must never stop the control loop
                log.exception("estimate for the metrics failed")
        return StepResult(
            commands=commands, decisions=self._new_decisions(before),
            faulty=self.parts.perception.monitor.faulty(),
            degradation=self.parts.perception.degradation(), estimate=estimate,
            rejected_by_rule=Counter(self.core.stats.rejected_by_rule),
            inbound=inbound, job=job,
        )

    def _complete(self, job: EvaluationJob, result: EvaluationResult, now: float) -> Completed:
        before = self.core.stats.recorded
        commands = complete(self.core, job, result, now)
        return Completed(commands, self._new_decisions(before),
                         Counter(self.core.stats.rejected_by_rule))

    # -- after a step (event loop) ------------------------------------------------------------
    def _apply_inbound(self, ing: Ingested) -> None:
        m = self.metrics
        for det, ts in ing.newest_ts.items():
            self._newest_ts[det] = max(ts, self._newest_ts.get(det, ts))
        for ack in ing.acks:
            m.plan_acks_total.labels(status=ack.status.value).inc()
            cmd = self._published.get(ack.seq)
            if ack.status is AckStatus.ACCEPTED:
                if cmd is not None and ack.seq > self._lease_seq:
                    self._lease_seq = ack.seq
                    self._lease_until = cmd.issued + cmd.lease_s
            else:
                log.error("hardware rejected plan seq=%d program=%s: %s", ack.seq,
                          ack.program_id, ack.reason)
        for state in ing.states:
            if self._state is None or state.ts >= self._state.ts:
                self._state = state

    def _apply_decisions(self, decisions: Sequence[Decision],
                         rejected_by_rule: Counter[str]) -> None:
        m = self.metrics
        for rule, n in rejected_by_rule.items():
            delta = n - self._rule_counts.get(rule, 0)
            if delta > 0:
                m.plans_rejected_total.labels(rule=rule).inc(delta)
        # Snapshots from the control loop and from a finished evaluation may be applied out
        # of order; the counts only grow, so keeping the larger never counts one twice.
        self._rule_counts = self._rule_counts | rejected_by_rule
        for d in decisions:
            self._record_decision(d)

    def _apply(self, r: StepResult, now: float) -> None:
        m = self.metrics
        self._apply_inbound(r.inbound)
        for det, ts in self._newest_ts.items():
            m.detector_data_age_seconds.labels(detector=det).set(max(0.0, now - ts))
        went_faulty: dict[str, list[str]] = {}
        recovered: list[str] = []
        for det in self.detector_ids:
            old, new = self._faulty.get(det), r.faulty.get(det)
            m.detector_healthy.labels(detector=det).set(0 if new is not None else 1)
            if new is not None and new != old:
                m.detector_faults_total.labels(fault=new.value).inc()
                went_faulty.setdefault(new.value, []).append(det)
            elif new is None and old is not None:
                recovered.append(det)
        # One line per kind of change: a broker outage turns every detector stale at once.
        for fault, dets in went_faulty.items():
            log.warning("detector(s) faulty (%s): %s", fault, ", ".join(dets))
        if recovered:
            log.info("detector(s) healthy again: %s", ", ".join(recovered))
        self._faulty = r.faulty
        m.detectors_faulty.set(len(r.faulty))
        self._apply_decisions(r.decisions, r.rejected_by_rule)
        st = self._state
        if st is not None:
            m.fallback_active.set(1 if st.fallback else 0)
            adaptive = not st.fallback and st.program_id != self.fallback.id
            m.adaptive_active.set(1 if adaptive else 0)
            prog = self._programs.get(st.program_id)
            if prog is not None:
                m.cycle_seconds.set(prog.cycle_s)
            elif st.program_id not in self._unknown_program_logged:
                self._unknown_program_logged.add(st.program_id)
                log.warning("hardware runs program %r, unknown to this service (fallback is "
                            "%r): no adaptive control until it runs a known program",
                            st.program_id, self.fallback.id)
        lease = 0.0 if self._lease_until is None else max(0.0, self._lease_until - now)
        m.lease_remaining_seconds.set(lease)
        if r.estimate is not None:
            for a, est in r.estimate.approaches.items():
                if a not in self.approach_ids:
                    continue  # groups without an approach (crossings) have no gauges
                m.queue_length_meters.labels(approach=a).set(est.queue_m)
                m.arrival_flow_vehicles_per_hour.labels(approach=a).set(est.flow_veh_h)
                if est.delay_s is not None and math.isfinite(est.delay_s):
                    m.estimated_delay_seconds.labels(approach=a).set(est.delay_s)

    def _record_decision(self, d: Decision) -> None:
        m = self.metrics
        m.decision_duration_seconds.observe(d.latency.total_s)
        m.plans_proposed_total.inc(len(d.candidates))
        below = sum(1 for c in d.candidates if c.refused is not None)
        if below:
            m.plans_below_pedestrian_floor_total.inc(below)
        gated = [c for c in d.candidates if c.violations is not None]
        passed = sum(1 for c in gated if not c.violations)
        if passed:
            m.plans_validated_total.inc(passed)
        if gated:
            # The core times its gate loop as a whole; spread it over the runs it made.
            each = d.latency.validate_s / len(gated)
            for _ in gated:
                m.validation_duration_seconds.observe(each)
        log.info("decision epoch=%d outcome=%s running=%s chosen=%s candidates=%d "
                 "latency=%.3fs reason=%s", d.epoch, d.outcome.value, d.running_id, d.chosen,
                 len(d.candidates), d.latency.total_s, d.reason)

    def _inputs_ready(self, r: StepResult, now: float) -> tuple[bool, str]:
        healthy = len(self.detector_ids) - len(r.faulty)
        st = self._state
        if st is None:
            hw = "no hardware state yet"
        elif now - st.ts > self.cfg.controller.max_state_age_s:
            hw = f"hardware state {now - st.ts:.0f} s old"
        else:
            hw = ""
        det = f"{healthy}/{len(self.detector_ids)} detectors healthy"
        if not r.degradation.adaptive_allowed:
            return False, f"{det} ({r.degradation.reason})" + (f"; {hw}" if hw else "")
        if hw:
            return False, f"{det}; {hw}"
        return True, det

    def _update_status(self, r: StepResult, now: float) -> None:
        ok, why = self._inputs_ready(r, now)
        if not self.ready:
            if ok:
                self.ready = True
                log.info("inputs healthy (%s): ready, adaptive control %s", why,
                         "on" if self.cfg.controller.adaptive else "off (shadow mode)")
                self.transport.set_status(ServiceState.ONLINE)
                self._announced = ServiceState.ONLINE
                self.notifier.ready(f"ready: {why}")
                self._status_text = ""
            else:
                self._set_status_text(f"waiting for inputs: {why}")
            return
        # D2: while adaptation is not allowed, say so on the status topic; the hardware then
        # returns to its own program at its next switch point instead of waiting for the lease.
        # Only a lasting degradation is announced: a detector flapping for a few seconds must
        # not send the junction to its fallback and back.
        if r.degradation.adaptive_allowed:
            self._degraded_since = None
        elif self._degraded_since is None:
            self._degraded_since = now
        degraded = (self._degraded_since is not None
                    and now - self._degraded_since >= DEGRADED_AFTER_S)
        wanted = ServiceState.DEGRADED if degraded else ServiceState.ONLINE
        if wanted is not self._announced:
            self._announced = wanted
            self.transport.set_status(wanted)
            if degraded:
                log.warning("status degraded, not adapting: %s", why)
            else:
                log.info("status online again: %s", why)
        st = self._state
        running = "?" if st is None else st.program_id + (" (fallback)" if st.fallback else "")
        broker = "broker connected" if self.transport.connected else "broker disconnected"
        mode = "adaptive" if self.cfg.controller.adaptive else "shadow"
        self._set_status_text(f"{mode}: running {running}; {why}; {broker}")

    def _set_status_text(self, text: str) -> None:
        if text != self._status_text:
            self._status_text = text
            self.notifier.status(text)

    def _publish(self, commands: list[PlanCommand]) -> None:
        for cmd in commands:
            if self.stopping:
                return
            if not self.cfg.controller.adaptive:
                log.info("shadow mode: plan seq=%d program=%s not pushed", cmd.seq,
                         cmd.program.id)
                continue
            # On disk before it can reach the hardware: a restart then knows what runs.
            self._persist_program(cmd)
            self.transport.publish(cmd)

    # -- ingest and decisions (event loop) -----------------------------------------------------
    async def ingest_loop(self) -> None:
        """Hand admitted messages to the core thread as they arrive."""
        loop = asyncio.get_running_loop()
        while True:
            await self.transport.wait_inbound()
            if INGEST_GATHER_S > 0:
                await asyncio.sleep(INGEST_GATHER_S)
            batch = self.transport.receive_timed()
            if not batch:
                continue
            try:
                ingested = await loop.run_in_executor(self._core_thread, self._ingest, batch)
            except Exception:
                log.exception("ingest into the core failed (%d message(s))", len(batch))
                continue
            self._apply_inbound(ingested)

    def _start_evaluation(self, job: EvaluationJob) -> None:
        task = asyncio.create_task(self._evaluate(job), name=f"atsc-evaluate-{job.epoch}")
        self._evaluations.add(task)
        task.add_done_callback(self._evaluations.discard)

    async def _evaluate(self, job: EvaluationJob) -> None:
        """Score ``job`` in the twin's workers, then complete the decision on the core thread."""
        result = await self.scorer.score(job)
        loop = asyncio.get_running_loop()
        try:
            done = await loop.run_in_executor(self._core_thread, self._complete, job, result,
                                              self.clock())
        except Exception:
            log.exception("completing decision epoch %d failed; nothing published", job.epoch)
            return
        self._apply_decisions(done.decisions, done.rejected_by_rule)
        self._publish(done.commands)

    # -- the control loop ---------------------------------------------------------------------
    async def control_loop(self) -> None:
        loop = asyncio.get_running_loop()
        # Core steps are short (the twin runs elsewhere); this long means the thread hangs.
        overdue_s = self.cfg.twin.timeout_s + 5.0
        pending: asyncio.Future[StepResult] | None = None
        started = 0.0
        step_now = 0.0
        next_tick = time.monotonic()
        while True:
            if pending is None:
                step_now = self.clock()
                st = self._state
                running = self._programs.get(st.program_id, self.fallback) if st else \
                    self.fallback
                want_estimate = step_now - self._last_estimate >= ESTIMATE_EVERY_S
                if want_estimate:
                    self._last_estimate = step_now
                batch = self.transport.receive_timed()
                pending = loop.run_in_executor(
                    self._core_thread, self._step, batch, step_now, self.ready, running,
                    want_estimate)
                started = time.monotonic()
            next_tick += PERIOD_S
            if next_tick < time.monotonic():
                next_tick = time.monotonic() + PERIOD_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(pending),
                                       timeout=max(0.0, next_tick - time.monotonic()))
            if pending.done():
                fut, pending = pending, None
                try:
                    result = fut.result()
                except Exception:
                    log.exception("core step failed; nothing published this second")
                else:
                    self._apply(result, self.clock())
                    self._update_status(result, self.clock())
                    self._publish(result.commands)
                    if result.job is not None:
                        self._start_evaluation(result.job)
            if pending is None or time.monotonic() - started < overdue_s:
                self.notifier.watchdog()
            else:
                log.error("core step running for %.0f s: not pinging the watchdog",
                          time.monotonic() - started)
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))

    # -- life cycle -------------------------------------------------------------------------
    def start_metrics_server(self) -> int:
        mc = self.cfg.metrics
        try:
            server, _thread = start_http_server(mc.port, addr=mc.bind,
                                                registry=self.metrics.registry)
        except OSError as exc:
            raise ConfigError(f"[metrics] cannot listen on {mc.bind}:{mc.port}: {exc.strerror}"
                              " (port in use? set [metrics] port or --metrics-port)",
                              self.cfg.source) from exc
        self._http = server
        port = int(server.server_port)
        log.info("metrics on http://%s:%d/metrics", mc.bind, port)
        return port

    async def run(self, stop: asyncio.Event | None = None) -> int:
        """Serve until SIGTERM/SIGINT (or ``stop`` is set: benchmarks, in-process tests)."""
        loop = asyncio.get_running_loop()
        if stop is None:
            stop = asyncio.Event()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
        self._set_status_text("starting: connecting to the broker")
        log.info("atsc %s serving junction %s (%d detectors, fallback %s, evaluator %s, "
                 "adaptive %s)", self.version, self.cfg.junction.name, len(self.detector_ids),
                 self.fallback.id, self.cfg.twin.evaluator,
                 "on" if self.cfg.controller.adaptive else "off")
        warm = loop.run_in_executor(None, self._warm_up)
        warm_failed: list[BaseException] = []

        def warm_done(f: asyncio.Future[None]) -> None:
            # Without its workers no decision can be scored: an online service that never
            # adapts would mislead the operator; exit so systemd restarts it (or shows why).
            exc = None if f.cancelled() else f.exception()
            if exc is not None and not self.stopping:  # a stop may close the pool mid-start
                warm_failed.append(exc)
                log.error("the twin's worker processes failed to start: %r; stopping", exc)
                stop.set()

        warm.add_done_callback(warm_done)
        mqtt_task = asyncio.create_task(self.transport.run(), name="atsc-mqtt")
        control = asyncio.create_task(self.control_loop(), name="atsc-control")
        ingest = asyncio.create_task(self.ingest_loop(), name="atsc-ingest")
        stop_wait = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({mqtt_task, control, ingest, stop_wait},
                                     return_when=asyncio.FIRST_COMPLETED)
        code = 1 if warm_failed else 0
        for t in (mqtt_task, control, ingest):
            if t in done and not t.cancelled() and t.exception() is not None:
                log.error("service task %s failed", t.get_name(), exc_info=t.exception())
                code = 1
        ingest.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await ingest
        await self.shutdown(control, mqtt_task, warm)
        stop_wait.cancel()
        return code

    def _warm_up(self) -> None:
        """Start the twin workers now (each lowers its own priority by ``TWIN_NICE``)."""
        self.parts.warm_up()
        if self.parts.nice_refused():
            log.warning("twin workers run at normal priority: lowering it was refused "
                        "(setpriority, e.g. a SystemCallFilter without @resources)")

    async def shutdown(self, control: asyncio.Task[None], mqtt_task: asyncio.Task[None],
                       warm: asyncio.Future[None]) -> None:
        self.stopping = True
        log.info("stopping: no more plans; handing the junction back to the fallback program")
        self.notifier.stopping("stopping: handing back to the fallback program")
        control.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await control
        for task in list(self._evaluations):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.scorer.close()
        await self.transport.shutdown(ServiceState.STOPPING, STATUS_FLUSH_S)
        mqtt_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(mqtt_task, 1.0)
        self._core_thread.shutdown(wait=False, cancel_futures=True)
        await self._close_twin(warm)
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        self.notifier.close()
        log.info("stopped")

    async def _close_twin(self, warm: asyncio.Future[None]) -> None:
        loop = asyncio.get_running_loop()
        closing = loop.run_in_executor(None, self.parts.close)
        try:
            await asyncio.wait_for(asyncio.shield(closing), 1.5)
        except TimeoutError:
            # A worker in the middle of a long evaluation: end our own children by pid.
            for pid in self.parts.worker_pids():
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
                    log.warning("twin worker %d terminated", pid)
            with contextlib.suppress(TimeoutError, Exception):
                await asyncio.wait_for(closing, 1.0)
        warm.cancel()


# -- entry point ---------------------------------------------------------------------------


def _setup_logging() -> None:
    # journald stamps every line itself; a terminal needs the time.
    fmt = ("%(levelname)s %(name)s: %(message)s" if os.environ.get("JOURNAL_STREAM")
           else "%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.basicConfig(level=logging.INFO, format=fmt, stream=sys.stderr, force=True)


def build_service(args: argparse.Namespace) -> Service:
    """Config, junction, fallback program and the service; ``ConfigError`` on bad input."""
    from sim.junction import load_junction

    cfg = load_config(getattr(args, "config", None)).with_overrides(
        broker=getattr(args, "broker", None), metrics_port=getattr(args, "metrics_port", None))
    # Fail now, not at the first connect, when the password credential is unreadable.
    cfg.mqtt.password()
    model = load_junction(cfg.junction.path)
    fallback = load_fallback(cfg, model.signals)
    return Service(cfg, model, fallback)


def serve_command(args: argparse.Namespace) -> int:
    """``atsc serve``: run until SIGTERM/SIGINT; 0 on a clean stop, 2 on bad configuration."""
    _setup_logging()
    service = build_service(args)
    try:
        service.start_metrics_server()
    except ConfigError:
        service.parts.close()
        raise
    try:
        code = asyncio.run(service.run())
    except KeyboardInterrupt:
        code = 0
    finally:
        logging.shutdown()
    return code
