"""Ids are checked where they go into a NATS subject: no wildcard, no extra token."""

from __future__ import annotations

import pytest

from tgdl.contracts.subjects import Names


@pytest.mark.parametrize("bad", ["*", ">", "a.b", "a b", "", "x" * 65, "b\r\nPUB x 1"])
def test_an_id_that_would_change_the_subject_is_refused(bad):
    names = Names("tgdl")
    for build in (names.batch_events, names.batch_progress, names.file_progress,
                  names.file_done):
        with pytest.raises(ValueError, match="NATS subject"):
            build(bad)


def test_ordinary_ids_pass():
    names = Names("tgdl")
    assert names.batch_events("batch_1f0c-2a") == "tgdl.evt.batch.batch_1f0c-2a"
    assert names.file_done(42) == "tgdl.file.42.done"
