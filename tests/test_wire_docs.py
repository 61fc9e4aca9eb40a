"""The schemas are valid JSON Schemas and the examples in docs/wire-contract.md obey them."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from controller import wire
from controller.wire import Rejected, RejectReason, TopicKind

DOC = Path(__file__).resolve().parents[1] / "docs" / "wire-contract.md"
SCHEMA_DIR = Path(__file__).resolve().parents[1] / "controller" / "schemas"
BLOCK = re.compile(r"^```json (\w+\.json)(?: reject=(\w+))?\n(.*?)^```", re.S | re.M)

DECODERS: dict[str, Callable[[bytes], object]] = {
    "reading.json": lambda p: wire.decode_reading("N_1_stop", p),
    "plan.json": wire.decode_plan,
    "plan_ack.json": wire.decode_ack,
    "state.json": wire.decode_state,
    "service_status.json": wire.decode_status,
}


def _examples() -> list[tuple[str, str | None, str]]:
    return [(m[1], m[2], m[3]) for m in BLOCK.finditer(DOC.read_text("utf-8"))]


EXAMPLES = _examples()


@pytest.mark.parametrize("kind", list(TopicKind))
def test_wire_schema_is_valid_draft_2020_12(kind: TopicKind) -> None:
    schema = wire.load_schema(kind)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False
    assert isinstance(schema["x-atsc-max-payload-bytes"], int)


def test_wire_every_schema_file_is_used() -> None:
    on_disk = {p.name for p in SCHEMA_DIR.glob("*.json")}
    assert on_disk == set(wire.SCHEMA_FILES.values())


def _all_objects_closed(node: object) -> list[str]:
    """Paths of object schemas that do not forbid unknown fields."""
    bad: list[str] = []
    if isinstance(node, dict):
        if node.get("type") == "object" and "additionalProperties" not in node:
            bad.append(str(node.get("title", node.get("required"))))
        for v in node.values():
            bad += _all_objects_closed(v)
    elif isinstance(node, list):
        for v in node:
            bad += _all_objects_closed(v)
    return bad


@pytest.mark.parametrize("kind", list(TopicKind))
def test_wire_schema_objects_are_closed(kind: TopicKind) -> None:
    assert _all_objects_closed(wire.load_schema(kind)) == []


def test_wire_doc_has_examples_for_every_payload() -> None:
    valid = {name for name, reject, _ in EXAMPLES if reject is None}
    assert valid == set(wire.SCHEMA_FILES.values())
    assert any(reject for _, reject, _ in EXAMPLES)


@pytest.mark.parametrize(("schema_name", "reject", "text"), EXAMPLES,
                         ids=[f"{n}-{r or 'valid'}-{i}" for i, (n, r, _) in enumerate(EXAMPLES)])
def test_wire_doc_example(schema_name: str, reject: str | None, text: str) -> None:
    payload = text.encode("utf-8")
    decoded = DECODERS[schema_name](payload)
    validator = Draft202012Validator(json.loads((SCHEMA_DIR / schema_name).read_text("utf-8")))
    if reject is None:
        assert not isinstance(decoded, Rejected), decoded
        validator.validate(json.loads(text))
        return
    assert isinstance(decoded, Rejected)
    assert decoded.reason is RejectReason(reject), decoded
    if decoded.reason is RejectReason.SCHEMA:
        assert not validator.is_valid(json.loads(text))
