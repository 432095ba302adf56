"""docs/asyncapi.yaml is FastStream's own description of every service's broker, merged
into one document, and it is current."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tgdl.contracts.api import BatchStatusResponse
from tgdl.contracts.commands import CancelBatch, CancelSingle, CommandReply, StartBatch
from tgdl.contracts.events import batch_event_adapter
from tgdl.contracts.jobs import DownloadJob, DownloadOutcome, DownloadProgress
from tgdl.contracts.subjects import Names
from tgdl.launcher.asyncapi import document, merge, render, service_documents

DOCS = Path(__file__).resolve().parents[2] / "docs"
REF = "#/components/schemas/{model}"


@pytest.fixture(scope="module")
def committed() -> dict[str, Any]:
    return yaml.safe_load((DOCS / "asyncapi.yaml").read_text())


def test_the_committed_document_is_current(committed):
    assert (DOCS / "asyncapi.yaml").read_text() == render(document()), (
        "docs/asyncapi.yaml is out of date: run `make asyncapi`")


def test_every_public_subject_is_a_channel_with_its_sender_and_receiver(committed):
    names = Names()
    addresses = {c["address"] for c in committed["channels"].values()}
    assert addresses >= {
        names.file_progress("{message_id}"), names.file_done("{message_id}"),
        names.batch_progress("{batch_id}"), names.batch_events("{batch_id}"),
        names.cmd_batch_start, names.cmd_batch_cancel, names.cmd_single_cancel,
        names.download_jobs,
    }
    operations = committed["operations"]
    for key in ("downloader_send_fileProgress", "projector_receive_fileProgress",
                "downloader_send_fileDone", "orchestrator_receive_fileDone",
                "orchestrator_send_downloadJobs", "downloader_receive_downloadJobs",
                "orchestrator_send_batchEvents", "projector_receive_batchEvents",
                "gateway_send_startBatch", "orchestrator_receive_startBatch",
                "projector_send_batchProgress"):
        assert key in operations, key
    assert operations["orchestrator_receive_startBatch"]["reply"]["channel"] == {
        "$ref": "#/channels/commandReply"}


@pytest.mark.parametrize("model", [DownloadProgress, DownloadOutcome, DownloadJob,
                                   BatchStatusResponse, StartBatch, CancelBatch,
                                   CancelSingle, CommandReply])
def test_payload_schemas_are_the_models_own(committed, model):
    schemas = committed["components"]["schemas"]
    expected = model.model_json_schema(ref_template=REF)
    for name, definition in expected.pop("$defs", {}).items():
        assert schemas[name] == definition, f"{name} (used by {model.__name__}) drifted"
    assert schemas[model.__name__] == expected


def test_the_event_channel_carries_every_event_type(committed):
    message = committed["components"]["messages"]["batchEvents"]
    payload = committed["components"]["schemas"][message["payload"]["$ref"].rsplit("/", 1)[1]]
    assert payload["type"] == "array"  # one message: what one decision appended
    union = payload["items"]
    documented = {r["$ref"].rsplit("/", 1)[1] for r in union["oneOf"]}
    expected = {r["$ref"].rsplit("/", 1)[1]
                for r in batch_event_adapter.json_schema()["oneOf"]}
    assert documented == expected and "FileFailed" in documented


def test_every_reference_resolves(committed):
    def refs(node: Any):
        if isinstance(node, dict):
            if "$ref" in node:
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    for ref in refs(committed):
        node: Any = committed
        for part in ref.removeprefix("#/").split("/"):
            assert isinstance(node, dict) and part in node, f"dangling reference {ref}"
            node = node[part]


def test_two_services_disagreeing_on_a_payload_is_refused():
    docs = service_documents()
    broken = copy.deepcopy(docs)
    # the projector now claims progress messages are download jobs
    projector = broken["projector"]
    for channel in projector["channels"].values():
        if channel["address"].endswith(".progress") and ".file." in channel["address"]:
            (ref,) = channel["messages"].values()
            node: Any = projector
            for part in ref["$ref"].removeprefix("#/").split("/"):
                node = node[part]
            node["payload"] = {"$ref": "#/components/schemas/DownloadJob"}
            projector["components"]["schemas"]["DownloadJob"] = \
                docs["downloader"]["components"]["schemas"]["DownloadJob"]
    with pytest.raises(ValueError, match="different payloads"):
        merge(broken)
