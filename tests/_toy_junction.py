"""A small four-arm junction model for pure-logic tests (no SUMO).

Groups: K1 (N/S through), K2 (N/S left), K3 (W/E through), K4 (W/E left), F1
(pedestrians parallel to N/S, crossing the W and E arms: conflicts with K2, K3, K4) and
F2 (pedestrians parallel to W/E).  Intergreens are typical values; F->K clearances are
long (pedestrian clearing time), K->F short.
"""

from __future__ import annotations

from controller.signals import GroupKind, JunctionSignals, SignalGroup, Stage, conflict_pairs


def toy_junction(max_cycle_s: int = 90) -> JunctionSignals:
    veh = GroupKind.VEHICLE
    groups = (
        SignalGroup("K1", veh, "N", (0, 1), 10, 3, 1),
        SignalGroup("K2", veh, "N", (2,), 5, 3, 1),
        SignalGroup("K3", veh, "W", (3, 4), 10, 3, 1),
        SignalGroup("K4", veh, "W", (5,), 5, 3, 1),
        SignalGroup("F1", GroupKind.PEDESTRIAN, "W", (6,), 7, 0, 0),
        SignalGroup("F2", GroupKind.PEDESTRIAN, "N", (7,), 7, 0, 0),
    )
    pairs = [("K1", "K2"), ("K1", "K3"), ("K1", "K4"), ("K2", "K3"), ("K2", "K4"),
             ("K3", "K4"), ("F1", "K2"), ("F1", "K3"), ("F1", "K4"), ("F2", "K1"),
             ("F2", "K2"), ("F2", "K4")]
    z: dict[tuple[str, str], int] = {}
    for a, b in pairs:
        for i, j in ((a, b), (b, a)):
            if i.startswith("F"):
                z[(i, j)] = 12
            elif j.startswith("F"):
                z[(i, j)] = 5
            else:
                z[(i, j)] = 6
    stages = (
        Stage("P1", frozenset({"K1", "F1"})),
        Stage("P2", frozenset({"K2"})),
        Stage("P3", frozenset({"K3", "F2"})),
        Stage("P4", frozenset({"K4"})),
    )
    return JunctionSignals("toy", groups, conflict_pairs(pairs), z, stages, link_count=8,
                           max_cycle_s=max_cycle_s)
