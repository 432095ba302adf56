"""tgdl run listens beyond this machine only with a token (or when told it is guarded)."""

from __future__ import annotations

import pytest

from tgdl.launcher.plan import ConfigError, http_address


def address(**env: str) -> tuple[str, int]:
    return http_address(env, lambda port: True, lambda: 1)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "tgdl.example.org"])
def test_a_non_loopback_host_without_a_token_is_refused(host):
    with pytest.raises(ConfigError, match="TGDL_API_TOKEN"):
        address(TGDL_HTTP_HOST=host)


@pytest.mark.parametrize("env", [
    {"TGDL_HTTP_HOST": "0.0.0.0", "TGDL_API_TOKEN": "t"},
    {"TGDL_HTTP_HOST": "0.0.0.0", "TGDL_ALLOW_ANONYMOUS": "1"},
    {"TGDL_HTTP_HOST": "127.0.0.1"}, {"TGDL_HTTP_HOST": "::1"}, {"TGDL_HTTP_HOST": "localhost"},
    {},
])
def test_loopback_a_token_or_an_explicit_opt_out_starts(env):
    assert address(**env)[0] == env.get("TGDL_HTTP_HOST", "127.0.0.1")


def test_a_malformed_hashed_token_is_a_config_error():
    with pytest.raises(ConfigError, match="64 hex digits"):
        address(TGDL_API_TOKEN="sha256:xyz")
