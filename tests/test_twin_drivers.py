"""Twin: its deterministic drivers release a standing queue as fast as the field's drivers.

The twin runs SUMO's Krauss driver without imperfection (``sigma`` 0), so that its runs
are deterministic.  That driver with SUMO's default reaction time and acceleration
released a queue about 30 % faster than the field's default driver (``sigma`` 0.5),
and the twin preferred cycles too short for the field (docs/twin.md, "Drivers").  These
tests measure the discharge at the Schlosskreuzung's north stop line with
``sim.discharge``, the same measurement as ``bench/twin_discharge.py``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from _twin_helpers import twin_worker

from controller.twin import BUS, CAR, TwinConfig, driver_types
from sim.discharge import Discharge, mean_discharge, measure_discharge, uncalibrated
from sim.junction import JunctionModel, load_junction
from sim.twin_config import twin_config_from_model

JUNCTION = Path(__file__).resolve().parent.parent / "scenarios" / "schlosskreuzung"
MODEL: JunctionModel = load_junction(JUNCTION)
CFG: TwinConfig = twin_config_from_model(MODEL)


def discharge(vtype: dict[str, str | float], label: str, scratch: Path, seed: int = 1) -> Discharge:
    return measure_discharge(
        MODEL.net_file, MODEL.signals.tls_id, "N_app", "S_out", vtype, label=label,
        scratch=scratch, entry_edge="N_in", cycles=8, seed=seed,
    )


@pytest.fixture(scope="module")
def field(tmp_path_factory: pytest.TempPathFactory) -> Discharge:
    """SUMO's default driver, as the field runs it, averaged over two seeds."""
    scratch = tmp_path_factory.mktemp("field-discharge")
    return mean_discharge([discharge({}, f"field-{seed}", scratch, seed) for seed in (1, 2)],
                          "field")


def test_the_twin_car_releases_a_queue_as_the_field_car_does(
    field: Discharge, tmp_path: Path
) -> None:
    twin = discharge(driver_types(CFG)[CAR], "twin", tmp_path)
    # Two saturated lanes: about 41 vehicles in 45 s of green (the first need 5-6 s to
    # cross the junction to the count on S_out).
    assert 35 < field.after(45) < 47
    for second, tolerance in ((20, 0.15), (30, 0.10), (45, 0.08)):
        assert twin.after(second) == pytest.approx(field.after(second), rel=tolerance), second


def test_without_calibration_the_twin_car_is_far_too_fast(
    field: Discharge, tmp_path: Path
) -> None:
    # SUMO's default driver with imperfection off: the twin before.
    before = discharge(
        driver_types(uncalibrated(CFG))[CAR], "before", tmp_path)
    assert before.after(45) > 1.18 * field.after(45)
    assert before.rate_veh_h() > 1.15 * field.rate_veh_h()


def test_the_worker_builds_its_vehicle_types_from_the_config(tmp_path: Path) -> None:
    import libsumo

    cfg = replace(CFG, startup_delay_s=0.4, car_accel_mps2=1.9)
    with twin_worker(cfg, str(tmp_path)):
        assert libsumo.vehicletype.getAccel("twin_car") == pytest.approx(1.9)
        assert libsumo.vehicletype.getImperfection("twin_car") == 0.0
        assert libsumo.vehicletype.getSpeedDeviation("twin_car") == 0.0
        # The reaction time stays the step length (docs/twin.md, "Drivers").
        assert libsumo.vehicletype.getTau("twin_car") == pytest.approx(1.0)
        assert libsumo.vehicletype.getImperfection("twin_bus") == 0.0
        assert libsumo.vehicletype.getVehicleClass("twin_bus") == "bus"
        assert libsumo.vehicletype.getLength("twin_bus") == pytest.approx(CFG.bus_length_m)
    assert set(driver_types(cfg)) == {CAR, BUS}


@pytest.mark.parametrize(("field_name", "value"),
                         [("startup_delay_s", -0.5), ("car_accel_mps2", 0.0)])
def test_a_negative_start_up_delay_or_no_acceleration_is_refused(
    field_name: str, value: float
) -> None:
    with pytest.raises(ValueError, match="startup_delay_s must be >= 0 and car_accel_mps2"):
        replace(CFG, **{field_name: value})


def test_a_movement_the_light_does_not_control_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="controls no link from 'N_app' to 'N_out'"):
        measure_discharge(MODEL.net_file, MODEL.signals.tls_id, "N_app", "N_out", {},
                          label="u-turn", scratch=tmp_path, cycles=1)
