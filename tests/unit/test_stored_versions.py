"""Batch logs and outcomes are kept for 30 days: what an older release wrote is read by
this one (the bodies below are byte for byte what version 1 of each model produced)."""

from __future__ import annotations

import json

import pytest

from tgdl.contracts.errors import ErrorCode, Failure, FileFailure
from tgdl.contracts.events import (
    BatchFinished,
    BatchStarted,
    FileFailed,
    PermitGranted,
    dump_event,
    dump_events,
    parse_event,
    parse_events,
)
from tgdl.contracts.jobs import DownloadOutcome, Lease
from tgdl.contracts.status import BatchKind, OutcomeStatus

V1_STARTED = (
    '{"batch_id":"batch_1","at":"2026-11-20T10:00:00Z","type":"BatchStarted","kind":"batch",'
    '"max_concurrent":3,"force":false,"requested_ids":[1,2],"to_download":[{"message_id":1,'
    '"chat":"demo","telegram_message_id":1001,"media_kind":"photo","file_name":"a.jpg",'
    '"mime_type":"image/jpeg","size":10,"date":null,"caption":null}],"already_downloaded":[],'
    '"failed_to_start":[{"message_id":2,"error":"no_media","detail":"message 2 carries no '
    'media","suggestion":"This message has no photo, video, document or audio to download."}],'
    '"already_downloading":[]}'
)
V1_FAILED = (
    '{"batch_id":"batch_1","at":"2026-11-20T10:00:05Z","type":"FileFailed","message_id":1,'
    '"job_id":"batch_1:1","error":"network_error","detail":"timed out",'
    '"suggestion":"Telegram could not be reached reliably; retry later."}'
)
V1_OUTCOME = (
    '{"job_id":"batch_1:1","message_id":1,"status":"failed","parties":["batch_1"],'
    '"file_path":null,"relative_path":null,"size":null,"error":"worker_lost",'
    '"detail":"the downloader stopped 6 times","suggestion":"check the downloader logs",'
    '"at":"2026-11-20T10:00:05Z"}'
)


def test_a_version_1_batch_start_is_read_as_the_current_model():
    event = parse_event(V1_STARTED)
    assert isinstance(event, BatchStarted) and event.v == 1 and event.kind is BatchKind.batch
    assert event.failed_to_start == [FileFailure.of_message(2, ErrorCode.no_media,
                                                            "message 2 carries no media")]


def test_a_version_1_file_failure_gets_its_failure_nested():
    event = parse_event(V1_FAILED)
    assert isinstance(event, FileFailed) and event.v == 2
    assert event.failure == Failure.of(ErrorCode.network, "timed out")
    # written again, it is the current shape, and reads back the same
    assert json.loads(dump_event(event))["failure"]["error"] == "network_error"
    assert parse_event(dump_event(event)) == event


def test_a_version_1_outcome_gets_its_failure_nested_wherever_it_is_parsed():
    outcome = DownloadOutcome.model_validate_json(V1_OUTCOME)
    assert outcome.v == 2 and outcome.status is OutcomeStatus.failed
    assert (outcome.failure.error, outcome.failure.detail) == (
        ErrorCode.worker_lost, "the downloader stopped 6 times")
    # inside a lease value too (the leases bucket keeps an ended job's outcome)
    lease = Lease.model_validate_json(
        '{"job_id":"batch_1:1","parties":["batch_1"],"outcome":' + V1_OUTCOME + "}")
    assert lease.outcome == outcome


def test_unchanged_events_read_with_or_without_a_version():
    v1 = ('{"batch_id":"b","at":"2026-11-20T10:00:00Z","type":"PermitGranted",'
          '"message_id":1,"job_id":"b:1"}')
    assert parse_event(v1) == parse_event(dump_event(parse_event(v1)))
    assert isinstance(parse_event(v1), PermitGranted)


def test_an_event_from_a_newer_release_is_refused_not_misread():
    newer = json.loads(dump_event(BatchFinished(
        batch_id="b", at="2026-11-20T10:00:00Z", overall_status="completed", completed=1,
        failed=0)))
    newer["v"] = 99
    with pytest.raises(ValueError, match="v"):
        parse_event(json.dumps(newer))


def test_a_message_of_one_event_from_before_decisions_were_grouped_reads_as_one():
    assert parse_events(V1_FAILED) == [parse_event(V1_FAILED)]
    assert parse_events(V1_FAILED.encode()) == [parse_event(V1_FAILED)]


def test_a_decision_round_trips_in_order_and_upcasts_each_event():
    decision = [parse_event(V1_STARTED), parse_event(V1_FAILED)]
    body = dump_events(decision)
    assert json.loads(body)[0]["type"] == "BatchStarted"
    assert parse_events(body) == decision
    # an array written with version 1 bodies inside is upcast event by event
    old_inside = "[" + V1_STARTED + "," + V1_FAILED + "]"
    assert parse_events(old_inside) == decision
