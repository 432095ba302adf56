"""TGDL_NATS_URL names one server or a cluster's seed list."""

from __future__ import annotations

import pytest

from tgdl.bus.broker import servers


def test_one_url_is_one_server():
    assert servers("nats://127.0.0.1:4222") == ["nats://127.0.0.1:4222"]


def test_a_comma_separated_list_names_every_seed_server():
    assert servers(" nats://a:4222, nats://b:4222,nats://c:4222 ") == [
        "nats://a:4222", "nats://b:4222", "nats://c:4222"]


def test_an_empty_setting_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="no NATS server"):
        servers(" , ")
