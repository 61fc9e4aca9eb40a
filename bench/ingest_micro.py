"""ReadingGate throughput: admitted readings per second, valid and mixed-garbage streams.

Prints a table; asserts nothing (performance is never asserted in tests).
Also times the generic JSON Schema validator on the same payloads, side by
side in the same run, to show what the hand-written check saves.

    .venv/bin/python bench/ingest_micro.py [--n 20000]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

from jsonschema import Draft202012Validator

from controller.messages import DetectorInfo, DetectorKind, DetectorReading
from controller.wire import (
    ReadingGate,
    Rejected,
    TopicKind,
    encode_reading,
    load_schema,
    parse_json,
    topic_for,
)

JUNCTION = "schlosskreuzung"
T0 = 1_767_225_600.0
DETECTORS = {
    f"D{i:02d}": DetectorInfo(f"D{i:02d}", DetectorKind.STOP_LINE, "N", (), ()) for i in range(32)
}
GARBAGE = [
    (f"atsc/{JUNCTION}/det/D00", b'{"ts": 1767225600.0, "seq": 1, "occupancy": NaN}'),
    (f"atsc/{JUNCTION}/det/D00", b'{"ts": 1767225600.0, "seq": 1, "occupancy": 3.5}'),
    (f"atsc/{JUNCTION}/det/D00", b'{"ts": 1767225600.0, "seq": 1, "bogus": 1}'),
    (f"atsc/{JUNCTION}/det/XX", b'{"ts": 1767225600.0, "seq": 1}'),
    (f"atsc/{JUNCTION}/det/D00", b"x" * 4096),
    (f"atsc/{JUNCTION}/det/D00", b"{not json"),
    (f"atsc/{JUNCTION}/det/D00", b'{"ts": 1700000000.0, "seq": 1}'),
]

Message = tuple[str, bytes, float]


def valid_stream(n: int) -> list[Message]:
    out: list[Message] = []
    seqs = dict.fromkeys(DETECTORS, 0)
    ids = sorted(DETECTORS)
    for k in range(n):
        det = ids[k % len(ids)]
        seqs[det] += 1
        ts = T0 + k * 0.001
        r = DetectorReading(det, ts, seqs[det], count=k % 3, occupancy=0.25, presence=k % 2 == 0,
                            speed_mps=11.2)
        out.append((topic_for(JUNCTION, TopicKind.DETECTOR, det), encode_reading(r), ts + 0.01))
    return out


def mixed_stream(n: int, garbage_share: float, rng: random.Random) -> list[Message]:
    out: list[Message] = []
    for topic, payload, now in valid_stream(n):
        out.append((topic, payload, now))
        while rng.random() < garbage_share:
            bad_topic, bad_payload = rng.choice(GARBAGE)
            out.append((bad_topic, bad_payload, now))
        if rng.random() < garbage_share / 4:
            out.append((topic, payload, now))  # redelivery
    return out


def run(stream: list[Message]) -> tuple[int, int, float]:
    gate = ReadingGate(DETECTORS, JUNCTION)
    admit = gate.admit
    admitted = rejected = 0
    t = time.perf_counter()
    for topic, payload, now in stream:
        if isinstance(admit(topic, payload, now), Rejected):
            rejected += 1
        else:
            admitted += 1
    return admitted, rejected, time.perf_counter() - t


def run_schema(stream: list[Message]) -> tuple[int, int, float]:
    """Size, strict JSON and the generic validator only: the part the fast check replaces."""
    is_valid: Callable[[object], bool] = Draft202012Validator(
        load_schema(TopicKind.DETECTOR)).is_valid
    admitted = rejected = 0
    t = time.perf_counter()
    for _topic, payload, _now in stream:
        try:
            ok = len(payload) <= 1024 and is_valid(parse_json(payload))
        except ValueError:
            ok = False
        admitted += ok
        rejected += not ok
    return admitted, rejected, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000, help="valid readings per stream")
    args = ap.parse_args()
    rng = random.Random(1)
    streams = {
        "valid": valid_stream(args.n),
        "mixed 20% garbage": mixed_stream(args.n, 0.2, rng),
        "mixed 50% garbage": mixed_stream(args.n, 0.5, rng),
    }
    print(f"{'stream':<20} {'checker':<14} {'messages':>9} {'admitted':>9} {'rejected':>9} "
          f"{'msg/s':>10} {'admitted/s':>11} {'us/msg':>7}")
    for name, stream in streams.items():
        for checker, fn in (("ReadingGate", run), ("jsonschema", run_schema)):
            admitted, rejected, dt = fn(stream)
            n = len(stream)
            print(f"{name:<20} {checker:<14} {n:>9} {admitted:>9} {rejected:>9} "
                  f"{n / dt:>10.0f} {admitted / dt:>11.0f} {dt / n * 1e6:>7.1f}")
    print("jsonschema row: size + JSON + generic validator only (no topic, time or seq checks).")
    print("Single thread on a shared machine: compare rows of one run, not runs.")


if __name__ == "__main__":
    main()
