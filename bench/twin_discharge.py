"""The twin's drivers against the field's: queue discharge at the Schlosskreuzung's stop line.

The twin runs SUMO's Krauss driver without imperfection so that its runs are
deterministic.  Such drivers release a standing queue faster than SUMO's default
driver (imperfection ``sigma`` 0.5, what the field simulation runs), and a twin with
more capacity than the field prefers cycles that are too short.  ``TwinConfig``'s
``startup_delay_s`` and ``car_accel_mps2`` restore the field's discharge.

One run, side by side: the north approach's through movement (N_app -> S_out, two
lanes) gets 50 s red and 50 s green in turn under a flow that keeps a queue standing;
the vehicles past the stop line are counted per second of green (``sim.discharge``).
Rows: the field's car (SUMO's default driver) over several seeds, the twin's car as
configured, and the twin's car before calibration (no start-up delay, acceleration
2.6 m/s², SUMO's defaults).  Columns: vehicles released after 5-45 s of green, the
rate from second 10 to 50 (vehicles per hour and lane) and each row's release after
45 s as a ratio to the field's.  Asserts nothing (``tests/test_twin_drivers.py``
holds the twin to the field).

    .venv/bin/python bench/twin_discharge.py [--seeds 3] [--cycles 20] [--out /tmp/atsc-discharge]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from controller.twin import CAR, driver_types
from sim.discharge import Discharge, mean_discharge, measure_discharge, uncalibrated
from sim.junction import load_junction
from sim.twin_config import twin_config_from_model

JUNCTION = Path(__file__).resolve().parent.parent / "scenarios" / "schlosskreuzung"
MOVEMENT = ("N_in", "N_app", "S_out")
LANES = 2
MARKS = (5, 10, 20, 30, 45)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3, help="seeds of the field's (random) driver")
    ap.add_argument("--cycles", type=int, default=20, help="measured red/green cycles per run")
    ap.add_argument("--out", type=Path, default=Path("/tmp/atsc-discharge"))
    args = ap.parse_args()

    model = load_junction(JUNCTION)
    config = twin_config_from_model(model)
    entry, approach, exit_edge = MOVEMENT

    def run(label: str, vtype: dict[str, str | float], seed: int = 1) -> Discharge:
        print(f"  {label} (seed {seed}) ...", flush=True)
        return measure_discharge(
            model.net_file, model.signals.tls_id, approach, exit_edge, vtype, label=label,
            scratch=args.out, entry_edge=entry, cycles=args.cycles, seed=seed,
        )

    field = mean_discharge(
        [run("field: SUMO default driver", {}, seed) for seed in range(1, args.seeds + 1)],
        f"field: SUMO default driver (sigma 0.5), {args.seeds} seeds")
    twin = run(f"twin (start-up delay {config.startup_delay_s:g} s, "
               f"accel {config.car_accel_mps2:g} m/s², sigma 0)", driver_types(config)[CAR])
    before = run("twin before (no start-up delay, accel 2.6 m/s², sigma 0)",
                 driver_types(uncalibrated(config))[CAR])

    rows = (field, twin, before)
    width = max(len(r.label) for r in rows)
    head = "  ".join(f"{m:>4d} s" for m in MARKS)
    print(f"\nvehicles past the stop line ({LANES} lanes, N_app -> S_out) after seconds of green\n")
    print(f"{'driver':<{width}}  {head}  veh/h/lane 10-50 s  45 s vs field")
    for r in rows:
        cells = "  ".join(f"{r.after(m):6.2f}" for m in MARKS)
        print(f"{r.label:<{width}}  {cells}  {r.rate_veh_h() / LANES:17.0f}  "
              f"{r.after(45) / field.after(45):13.2f}")


if __name__ == "__main__":
    main()
