"""Signal drivers: what decides the signal states of the controlled traffic light in a run.

One driver per controller name.  A driver gets the detector readings of each
second and returns the state of every signal group for the next second, or
``None`` when SUMO's own traffic light logic (actuated, delay_based) drives
the lights.  Either way the run's conflict monitor checks every second.

- ``fixed``: the hardware runs its stored Webster-tuned fixed-time program.
- ``fixed-optimised``: the same hardware with the plan the delay model finds best for
  the same traffic count, leading left turns included (a stronger engineer's plan, to
  show how much of adaptive control's gain a well-chosen fixed structure gets too).
- ``actuated`` / ``delay_based``: SUMO's own logics on the same stage
  sequence, intergreens and minimum greens (``tls_program``).
- ``max-pressure``: max-pressure stage selection on detector data
  (``controller.max_pressure``), run inside the hardware.

Adaptive drivers (which push plans through a transport) plug in through
``register_driver``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from controller.max_pressure import MaxPressure
from controller.messages import DetectorReading
from controller.plans import SignalProgram
from sim.hardware import SignalController
from sim.junction import JunctionModel


@dataclass(frozen=True)
class DriverContext:
    """What a driver may know: the junction's configuration, the fixed-time program, the stage
    sequence.  Never the simulation itself."""

    model: JunctionModel
    fixed_program: SignalProgram
    sequence: tuple[str, ...]
    run_dir: str
    seed: int


class SignalDriver(Protocol):
    #: ``True`` when SUMO's own logic drives the lights (the driver only observes).
    native: bool

    def step(self, now: float, readings: Sequence[DetectorReading]) -> Mapping[str, str] | None:
        """Signal group states for the coming second, or None for SUMO-native logic."""

    def close(self) -> dict[str, object]:
        """Finish and report driver statistics (plans pushed, fallbacks, ...)."""


# A driver may also define ``observe_truth(sumo_module, now)``: the field then calls it every
# second with the ground-truth simulation.  Only evaluation drivers named as such ("oracle")
# may do this; the test suite proves the adaptive driver does not.


DriverFactory = Callable[[DriverContext], SignalDriver]
_REGISTRY: dict[str, DriverFactory] = {}


def register_driver(name: str, factory: DriverFactory) -> None:
    _REGISTRY[name] = factory


def driver_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def make_driver(name: str, ctx: DriverContext) -> SignalDriver:
    try:
        factory = _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise KeyError(f"unknown controller {name!r} (known: {known})") from None
    return factory(ctx)


class FixedTimeDriver:
    """The hardware's stored fixed-time program (Festzeitprogramm)."""

    native = False

    def __init__(self, ctx: DriverContext) -> None:
        self.hardware = SignalController(ctx.model.signals, ctx.fixed_program)

    def step(self, now: float, readings: Sequence[DetectorReading]) -> Mapping[str, str]:
        return self.hardware.tick(now)

    def close(self) -> dict[str, object]:
        return {"monitor_faults": len(self.hardware.stats.monitor_faults)}


class MaxPressureDriver:
    """Max-pressure stage selection on detector readings, run in the hardware."""

    native = False

    def __init__(self, ctx: DriverContext) -> None:
        # The maximum greens come from the engineer's plan, as for SUMO's actuated baseline.
        self.logic = MaxPressure(ctx.model.signals, ctx.model.detectors, ctx.sequence,
                                 reference=ctx.fixed_program)

    def step(self, now: float, readings: Sequence[DetectorReading]) -> Mapping[str, str]:
        for r in readings:
            self.logic.observe(r)
        return self.logic.step()

    def close(self) -> dict[str, object]:
        return {}


class SumoNativeDriver:
    """SUMO's own actuated or delay-based logic; the program is loaded as an additional file."""

    native = True

    def step(self, now: float, readings: Sequence[DetectorReading]) -> None:
        return None

    def close(self) -> dict[str, object]:
        return {}


register_driver("fixed", FixedTimeDriver)
#: The fixed-time driver whose stored program the runner optimises (``fixed_time_plan``).
FIXED_OPTIMISED = "fixed-optimised"
register_driver(FIXED_OPTIMISED, FixedTimeDriver)
register_driver("max-pressure", MaxPressureDriver)
register_driver("actuated", lambda ctx: SumoNativeDriver())
register_driver("delay_based", lambda ctx: SumoNativeDriver())

#: Controllers whose program SUMO runs itself, with the tlLogic type to write.
NATIVE_TYPES = {"actuated": "actuated", "delay_based": "delay_based"}


def _register_adaptive() -> None:
    # The adaptive and oracle drivers live in their own module (they pull in the twin);
    # importing it registers them.
    import sim.adaptive_driver  # noqa: F401


_register_adaptive()
