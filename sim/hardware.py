"""The simulated signal controller hardware (Steuergerät).

It behaves like the controller in the cabinet at the junction:

- it stores its own fixed-time fallback program and runs it unless told
  otherwise;
- it accepts a pushed signal program only after its own, independent check
  (``sim.monitor``: conflicts, intergreens, minimum greens), including the
  switch from the running program and the switch back to the fallback;
- it switches programs only at a cycle boundary (the defined switch point);
- it returns to the fallback program by itself when a lease would run out
  before the next cycle boundary, so a pushed plan never runs past its lease;
- every second it shows, its conflict monitor checks again, whatever produced
  the states (a pushed plan, the fallback, or a local baseline logic).

Nothing here imports ``controller.safety``: the service validates, the
hardware checks again with separate code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from controller.messages import AckStatus, HardwareState, PlanAck, PlanCommand
from controller.plans import SignalProgram
from controller.signals import JunctionSignals, SignalState
from sim.monitor import ConflictMonitor, Fault, check_program, check_switch, expand_program


@dataclass
class HardwareStats:
    """What the hardware did during a run (reported with the KPIs)."""

    plans_accepted: int = 0
    plans_rejected: int = 0
    lease_renewals: int = 0
    switches: int = 0
    fallbacks: int = 0
    seconds_in_fallback: int = 0
    seconds_total: int = 0
    monitor_faults: list[Fault] = field(default_factory=list)
    reject_reasons: list[str] = field(default_factory=list)


class SignalController:
    """Plays the signal controller: fallback program, leases, switch points, conflict monitor."""

    def __init__(self, junction: JunctionSignals, fallback: SignalProgram) -> None:
        faults = check_program(junction, fallback)
        if faults:
            raise ValueError(f"fallback program {fallback.id} fails the hardware check: {faults}")
        self.junction = junction
        self.fallback = fallback
        self.monitor = ConflictMonitor(junction)
        self.stats = HardwareStats()
        self._running = fallback
        self._second = 0
        self._lease_until = float("inf")
        self._pending: tuple[SignalProgram, float] | None = None
        self._last_seq = -1
        self._cache: dict[str, tuple[SignalProgram, list[dict[str, str]]]] = {}
        #: Program given up by ``release()`` while it still runs (until the switch point).
        self.released_program: str | None = None

    # -- plan interface ------------------------------------------------------
    @property
    def running(self) -> SignalProgram:
        return self._running

    @property
    def in_fallback(self) -> bool:
        return self._running is self.fallback

    def submit(self, cmd: PlanCommand, now: float) -> PlanAck:
        """Check a pushed plan independently; accept it for the next switch point or reject it."""
        program = cmd.program
        if cmd.seq <= self._last_seq:
            return self._ack(cmd, AckStatus.REJECTED, f"sequence {cmd.seq} already seen", now)
        self._last_seq = cmd.seq
        if now > cmd.issued + cmd.lease_s:
            return self._reject(cmd, "lease already expired on arrival", now)
        if set(program.greens) != set(self.junction.group_ids):
            return self._reject(cmd, "program does not cover exactly this junction's groups", now)
        lease_until = cmd.issued + cmd.lease_s
        # A renewal is of the plan that will run next; a new plan replaces any pending one
        # and takes over from the running one, so that is the switch to check.
        current = self._pending[0] if self._pending else self._running
        if program.id == current.id and program == current:
            # Lease renewal: same program, later lease.
            if self._pending:
                self._pending = (program, lease_until)
            else:
                self._lease_until = lease_until
            self.stats.lease_renewals += 1
            return self._ack(cmd, AckStatus.ACCEPTED, "lease renewed", now)
        for label, faults in (
            ("program", check_program(self.junction, program)),
            ("switch from running program", check_switch(self.junction, self._running, program)),
            ("switch back to fallback", check_switch(self.junction, program, self.fallback)),
        ):
            if faults:
                return self._reject(cmd, f"{label}: {faults[0]}", now)
        self._pending = (program, lease_until)
        self.stats.plans_accepted += 1
        return self._ack(cmd, AckStatus.ACCEPTED, "accepted for the next cycle boundary", now)

    def release(self) -> bool:
        """Return to the fallback program at the next switch point; False if nothing to do.

        What a cabinet does when its supervising system goes away or a successor plan was
        refused: the lease is treated as run out, so the switch point selects the fallback.
        """
        already = self.in_fallback or self._lease_until == -math.inf
        if already and self._pending is None:
            return False
        self._pending = None
        self._lease_until = -math.inf
        self.released_program = None if self.in_fallback else self.running.id
        return True

    def _reject(self, cmd: PlanCommand, reason: str, now: float) -> PlanAck:
        self.stats.plans_rejected += 1
        self.stats.reject_reasons.append(reason)
        return self._ack(cmd, AckStatus.REJECTED, reason, now)

    @staticmethod
    def _ack(cmd: PlanCommand, status: AckStatus, reason: str, now: float) -> PlanAck:
        return PlanAck(program_id=cmd.program.id, seq=cmd.seq, status=status, reason=reason, ts=now)

    # -- time ------------------------------------------------------------------
    def tick(self, now: float) -> Mapping[str, str]:
        """Advance one second and return the state of every signal group for it."""
        if self._second == 0:
            self._at_switch_point(now)
        states = self._states(self._running)[self._second]
        self.stats.monitor_faults.extend(self.monitor.observe(states))
        self.stats.seconds_total += 1
        if self.in_fallback:
            self.stats.seconds_in_fallback += 1
        self._second = (self._second + 1) % self._running.cycle_s
        return states

    def _at_switch_point(self, now: float) -> None:
        if self._pending is not None:
            program, lease_until = self._pending
            self._pending = None
            if now + program.cycle_s <= lease_until:
                self._switch(program, lease_until)
                return
        if not self.in_fallback and now + self._running.cycle_s > self._lease_until:
            self._switch(self.fallback, float("inf"))
            self.stats.fallbacks += 1

    def _switch(self, program: SignalProgram, lease_until: float) -> None:
        if program is not self._running:
            self.stats.switches += 1
        self._running = program
        self._lease_until = lease_until
        self._second = 0

    def _states(self, program: SignalProgram) -> list[dict[str, str]]:
        hit = self._cache.get(program.id)
        if hit is not None and hit[0] is program:
            return hit[1]
        states = expand_program(self.junction, program)
        if len(self._cache) > 64:
            self._cache.clear()
        self._cache[program.id] = (program, states)
        return states

    def state(self, now: float) -> HardwareState:
        order = self.junction.group_ids
        sec = (self._second - 1) % self._running.cycle_s
        states = self._states(self._running)[sec]
        return HardwareState(
            ts=now,
            program_id=self._running.id,
            fallback=self.in_fallback,
            cycle_second=sec,
            signal_states="".join(states.get(g, SignalState.RED.value) for g in order),
        )
