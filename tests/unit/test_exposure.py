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


def test_each_service_gets_only_its_own_secrets_and_nats_login(tmp_path):
    from tgdl.launcher.plan import Source, Wiring, service_specs

    wiring = Wiring(nats_url="nats://tgdl:p@h:1", database_url="postgresql://tgdl:pw@/tgdl",
                    source=Source.sim, sim_url=None, http_host="127.0.0.1", http_port=8000,
                    session_file=tmp_path / "s", service_nats_urls={
                        s: f"nats://{s}:pw@h:1" for s in (
                            "gateway", "orchestrator", "projector", "downloader")})
    base = {"TGDL_API_ID": "1", "TGDL_API_HASH": "h", "TGDL_API_TOKEN": "t", "OTHER": "o"}
    env = {spec.name: spec.env for spec in service_specs(base, wiring, downloaders=1)}
    assert env["downloader-1"]["TGDL_API_HASH"] == "h"
    assert "TGDL_API_TOKEN" not in env["downloader-1"]
    assert env["gateway"]["TGDL_API_TOKEN"] == "t" and "TGDL_API_HASH" not in env["gateway"]
    for name in ("orchestrator", "projector"):
        assert not {"TGDL_API_ID", "TGDL_API_HASH", "TGDL_API_TOKEN"} & env[name].keys()
    for name in ("gateway", "orchestrator", "projector"):
        assert env[name]["TGDL_DATABASE_URL"] == "postgresql://tgdl:pw@/tgdl"
    assert "TGDL_DATABASE_URL" not in env["downloader-1"]  # it never uses the database
    for name, user in (("gateway", "gateway"), ("orchestrator", "orchestrator"),
                       ("projector", "projector"), ("downloader-1", "downloader")):
        assert env[name]["TGDL_NATS_URL"] == f"nats://{user}:pw@h:1"
        assert env[name]["OTHER"] == "o"
