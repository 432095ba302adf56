"""docs/asyncapi.yaml describes the subjects and payloads the code really uses."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tgdl.contracts.events import batch_event_adapter
from tgdl.contracts.subjects import Names

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("asyncapi_generator", DOCS / "asyncapi.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return yaml.safe_load((DOCS / "asyncapi.yaml").read_text())


def test_the_document_is_up_to_date(generator: ModuleType, document: dict[str, Any]) -> None:
    assert document == generator.build_document(), (
        "docs/asyncapi.yaml is out of date: run `python docs/asyncapi.py`"
    )


def test_payload_schemas_are_the_models_own(
    generator: ModuleType, document: dict[str, Any]
) -> None:
    schemas = document["components"]["schemas"]
    for name, model in generator.PAYLOAD_MODELS.items():
        expected = model.model_json_schema(ref_template=generator.REF)
        for def_name, definition in expected.pop("$defs", {}).items():
            assert schemas[def_name] == definition, f"{def_name} (used by {name}) drifted"
        assert schemas[name] == expected, f"{name} drifted from {model.__qualname__}"


def test_the_event_union_lists_every_event_type(document: dict[str, Any]) -> None:
    expected = batch_event_adapter.json_schema()
    documented = document["components"]["schemas"]["BatchEvent"]
    assert documented["discriminator"] == "type"
    def members(union: dict[str, Any]) -> set[str]:
        return {r["$ref"].rsplit("/", 1)[1] for r in union["oneOf"]}

    assert members(documented) == members(expected)
    assert "BatchStarted" in members(documented)


def test_every_public_subject_is_a_channel(document: dict[str, Any]) -> None:
    names = Names("{prefix}")
    addresses = {c["address"] for c in document["channels"].values()}
    assert addresses >= {
        names.file_progress("{message_id}"), names.file_done("{message_id}"),
        names.batch_progress("{batch_id}"), names.batch_events("{batch_id}"),
        names.cmd_batch_start, names.cmd_batch_cancel, names.cmd_single_cancel,
    }
    assert names.download_jobs not in addresses  # internal work queue


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    def refs(node: Any):
        if isinstance(node, dict):
            if "$ref" in node:
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    for ref in refs(document):
        node: Any = document
        for part in ref.removeprefix("#/").split("/"):
            assert isinstance(node, dict) and part in node, f"dangling reference {ref}"
            node = node[part]
