"""The hand-written reading check accepts and rejects exactly what reading.json does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, find, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from controller.wire import RejectReason, parse_json, reading_problem, schema_reason

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[1] / "controller" / "schemas" / "reading.json").read_text()
)
VALIDATOR = Draft202012Validator(SCHEMA)
BOUNDS = {
    name: (p.get("minimum"), p.get("maximum")) for name, p in SCHEMA["properties"].items()
}


def _near(lo: float, hi: float) -> st.SearchStrategy[Any]:
    """Values in, at and just beyond a range, as ints, floats and integral floats."""
    edges = [lo, hi, lo - 1, hi + 1, lo - 1e-9, hi + 1e-9, (lo + hi) / 2]
    return st.one_of(
        st.sampled_from(edges),
        st.floats(float(lo - 10), float(hi + 10), allow_nan=False, allow_infinity=False),
        st.integers(int(lo) - 10, int(min(hi, 2**60)) + 10),
        st.integers(int(lo) - 10, int(min(hi, lo + 1e6))).map(float),
    )


WRONG_TYPES = st.one_of(
    st.none(), st.booleans(), st.text(max_size=5), st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
    st.integers(-5, 5), st.floats(-2, 2, allow_nan=False),
)


def _value(name: str) -> st.SearchStrategy[Any]:
    kind = SCHEMA["properties"][name]["type"]
    good = st.booleans() if kind == "boolean" else _near(*BOUNDS[name])
    return st.one_of(good, good, good, WRONG_TYPES)


FIELDS = sorted(SCHEMA["properties"])


def _valid(name: str) -> st.SearchStrategy[Any]:
    spec = SCHEMA["properties"][name]
    if spec["type"] == "boolean":
        return st.booleans()
    lo, hi = BOUNDS[name]
    if spec["type"] == "integer":
        return st.one_of(st.integers(int(lo), int(hi)), st.integers(int(lo), int(hi)).map(float))
    return st.one_of(st.floats(float(lo), float(hi)), st.integers(int(lo), int(hi)))


@st.composite
def _one_flaw(draw: st.DrawFn) -> dict[str, Any]:
    """A valid reading with at most one thing wrong: the cases a sloppy check gets wrong."""
    obj = {"ts": draw(_valid("ts")), "seq": draw(_valid("seq"))}
    for name in draw(st.sets(st.sampled_from(FIELDS))):
        obj[name] = draw(_valid(name))
    flaw = draw(st.sampled_from(["none", "value", "missing", "unknown"]))
    if flaw == "value":
        obj[draw(st.sampled_from(FIELDS))] = draw(st.one_of(WRONG_TYPES, _value("count"),
                                                            _value("ts"), _value("occupancy")))
    elif flaw == "missing":
        obj.pop(draw(st.sampled_from(["ts", "seq"])))
    elif flaw == "unknown":
        obj[draw(st.sampled_from(["detector_id", "Count", "speed", ""]))] = 1
    return obj

READINGS = st.one_of(
    _one_flaw(),
    _one_flaw(),
    st.fixed_dictionaries(
        {"ts": _near(*BOUNDS["ts"]), "seq": _near(*BOUNDS["seq"])},
        optional={name: _value(name) for name in FIELDS if name not in ("ts", "seq")},
    ),
    st.fixed_dictionaries(
        {},
        optional={
            **{name: _value(name) for name in FIELDS},
            "detector_id": st.text(max_size=8), "extra": WRONG_TYPES,
        },
    ),
    WRONG_TYPES,
)


def _schema_reasons(obj: object) -> set[RejectReason]:
    return {schema_reason(str(e.validator)) for e in VALIDATOR.iter_errors(obj)}


@settings(max_examples=1000, deadline=None)
@given(READINGS)
@example({"ts": 1767225600, "seq": 3.0})
@example({"ts": 1767225600.0, "seq": True})
@example({"ts": 1767225600.0, "seq": 1, "presence": 1})
@example({"ts": 1767225600.0, "seq": 1, "count": 200.0, "occupancy": 1})
@example({"ts": 1767225600.0, "seq": 1, "count": 200.5})
@example({"ts": 1767225600.0, "seq": -1})
@example({"ts": 1767225600.0, "seq": 2**64})
def test_wire_fast_reading_check_agrees_with_schema(obj: object) -> None:
    # Go through JSON as the wire does: what the gate sees is what json produces.
    parsed = parse_json(json.dumps(obj).encode())
    problem = reading_problem(parsed)
    reasons = _schema_reasons(parsed)
    assert (problem is None) == (not reasons), (parsed, problem, reasons)
    if problem is not None:
        assert problem[0] in reasons, (parsed, problem, reasons)


@pytest.mark.parametrize("outcome", [None, RejectReason.SCHEMA, RejectReason.OUT_OF_RANGE])
def test_wire_generator_reaches_every_outcome(outcome: RejectReason | None) -> None:
    """Guards the property test against a generator that only makes one kind of payload."""

    def hits(obj: object) -> bool:
        problem = reading_problem(parse_json(json.dumps(obj).encode()))
        return (problem is None) if outcome is None else (problem is not None
                                                          and problem[0] is outcome)

    found = find(READINGS, hits, settings=settings(max_examples=2000, database=None))
    assert hits(found)


def test_wire_huge_number_is_out_of_range_for_both() -> None:
    parsed = parse_json(b'{"ts": 1e400, "seq": 1}')
    problem = reading_problem(parsed)
    assert problem is not None and problem[0] is RejectReason.OUT_OF_RANGE
    assert _schema_reasons(parsed) == {RejectReason.OUT_OF_RANGE}
