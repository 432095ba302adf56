"""What `tgdl run` decides from the environment, without starting anything."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tgdl.contracts.catalog import CatalogEntry, MediaKind
from tgdl.contracts.config import CommonSettings
from tgdl.launcher.cli import build_parser
from tgdl.launcher.client import running_gateway
from tgdl.launcher.plan import (
    ConfigError,
    Home,
    Source,
    Wiring,
    browser_url,
    check_service_settings,
    choose_telegram,
    downloader_count,
    example_ids,
    http_address,
    metrics_banner,
    metrics_ports,
    metrics_targets,
    pick_port,
    ready_banner,
    service_specs,
    settings_from,
    simulator_spec,
)
from tgdl.launcher.supervisor import Backoff, describe_exit

ACCOUNT = {"TGDL_API_ID": "12345", "TGDL_API_HASH": "0123abcd"}


# --- Telegram source ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "session_exists", "expected"),
    [
        ({}, False, Source.sim),
        ({}, True, Source.sim),  # a session without credentials cannot be used
        (ACCOUNT, False, Source.sim),  # credentials, not logged in yet
        (ACCOUNT, True, Source.telethon),
        ({**ACCOUNT, "TGDL_TELEGRAM": "sim"}, True, Source.sim),  # forced
        ({**ACCOUNT, "TGDL_TELEGRAM": "telethon"}, True, Source.telethon),
        ({"TGDL_API_ID": "12345"}, True, Source.sim),  # half the credentials
    ],
)
def test_telegram_source(env: dict[str, str], session_exists: bool, expected: Source) -> None:
    assert choose_telegram(env, session_exists).source is expected


def test_not_logged_in_with_credentials_says_to_log_in() -> None:
    assert "tgdl login" in choose_telegram(ACCOUNT, session_exists=False).reason


@pytest.mark.parametrize(
    ("env", "session_exists", "says"),
    [
        ({"TGDL_TELEGRAM": "telethon"}, True, "TGDL_API_ID and TGDL_API_HASH"),
        ({**ACCOUNT, "TGDL_TELEGRAM": "telethon"}, False, "tgdl login"),
        ({"TGDL_TELEGRAM": "mtproto"}, False, "'sim' or 'telethon'"),
    ],
)
def test_impossible_telegram_source_is_explained(
    env: dict[str, str], session_exists: bool, says: str
) -> None:
    with pytest.raises(ConfigError, match=says):
        choose_telegram(env, session_exists)


# --- data folder and ports ---------------------------------------------------------------


def test_home_defaults_to_dot_tgdl_in_the_working_folder(tmp_path: Path) -> None:
    home = Home.from_env({}, tmp_path)
    assert home.root == tmp_path.resolve() / ".tgdl"
    assert home.nats == home.root / "nats"
    assert home.postgres == home.root / "pg"
    assert home.session_file({}, tmp_path) == home.root / "telegram.session"


def test_home_and_session_file_follow_the_environment(tmp_path: Path) -> None:
    env = {"TGDL_HOME": "data", "TGDL_SESSION_FILE": "secrets/me.session"}
    home = Home.from_env(env, tmp_path)
    assert home.root == (tmp_path / "data").resolve()
    assert home.session_file(env, tmp_path) == (tmp_path / "secrets/me.session").resolve()


def _ports(free: set[int], fallback: int = 50123):
    return (lambda port: port in free), (lambda: fallback)


def test_a_free_port_is_never_handed_out_twice_even_when_the_system_offers_it_again() -> None:
    from tgdl.launcher.embedded import free_port

    taken = free_port()  # a real pick; the fake's own offers are below the system's range
    offers = iter([taken, 1001, 1001, taken, 1002])
    assert [free_port(lambda: next(offers)) for _ in range(2)] == [1001, 1002]


def test_preferred_port_when_free() -> None:
    is_free, any_free = _ports({4222})
    assert pick_port(4222, False, is_free, any_free, "NATS", "") == 4222


def test_busy_preferred_port_falls_back_to_a_free_one() -> None:
    is_free, any_free = _ports(set(), fallback=50123)
    assert pick_port(4222, False, is_free, any_free, "NATS", "") == 50123


def test_busy_port_the_user_asked_for_is_an_error() -> None:
    is_free, any_free = _ports(set())
    with pytest.raises(ConfigError, match="TGDL_HTTP_PORT"):
        http_address({"TGDL_HTTP_PORT": "9000"}, is_free, any_free)


def test_http_address_defaults_to_loopback_8000() -> None:
    is_free, any_free = _ports({8000})
    assert http_address({}, is_free, any_free) == ("127.0.0.1", 8000)


def test_http_port_must_be_a_number() -> None:
    is_free, any_free = _ports({8000})
    with pytest.raises(ConfigError, match="port number"):
        http_address({"TGDL_HTTP_PORT": "eighty"}, is_free, any_free)


@pytest.mark.parametrize(
    ("host", "url"),
    [("127.0.0.1", "http://127.0.0.1:8000"), ("0.0.0.0", "http://127.0.0.1:8000"),
     ("::1", "http://[::1]:8000"), ("example.lan", "http://example.lan:8000")],
)
def test_browser_url(host: str, url: str) -> None:
    assert browser_url(host, 8000) == url


@pytest.mark.parametrize(("raw", "count"), [(None, 2), ("1", 1), ("5", 5)])
def test_downloader_count(raw: str | None, count: int) -> None:
    env = {} if raw is None else {"TGDL_DOWNLOADERS": raw}
    assert downloader_count(env) == count


@pytest.mark.parametrize("raw", ["0", "-1", "two"])
def test_downloader_count_rejects_nonsense(raw: str) -> None:
    with pytest.raises(ConfigError, match="TGDL_DOWNLOADERS"):
        downloader_count({"TGDL_DOWNLOADERS": raw})


# --- children ------------------------------------------------------------------------------


def _wiring(source: Source = Source.sim, sim_url: str | None = "http://127.0.0.1:8100"):
    return Wiring(
        nats_url="nats://127.0.0.1:4222", database_url="postgresql:///x?host=/tmp/pg",
        source=source, sim_url=sim_url, http_host="127.0.0.1", http_port=8000,
        session_file=Path("/data/telegram.session"),
    )


def test_every_service_is_its_own_python_module_process() -> None:
    specs = service_specs({}, _wiring(), downloaders=3, python="/venv/bin/python")
    assert [s.name for s in specs] == [
        "gateway", "orchestrator", "projector", "catalog", "downloader-1", "downloader-2",
        "downloader-3"
    ]
    assert specs[0].argv == ["/venv/bin/python", "-m", "tgdl.gateway"]
    assert specs[3].argv == ["/venv/bin/python", "-m", "tgdl.catalog"]
    assert {tuple(s.argv) for s in specs[4:]} == {("/venv/bin/python", "-m", "tgdl.downloader")}


def test_children_get_the_resolved_servers_and_keep_the_users_settings() -> None:
    base = {"TGDL_GLOBAL_CAP": "4", "TGDL_NATS_URL": "nats://stale:1", "PATH": "/bin"}
    for spec in service_specs(base, _wiring(), downloaders=1):
        assert spec.env is not None
        assert spec.env["TGDL_NATS_URL"] == "nats://127.0.0.1:4222"
        if not spec.name.startswith("downloader"):  # downloaders never use the database
            assert spec.env["TGDL_DATABASE_URL"] == "postgresql:///x?host=/tmp/pg"
        assert spec.env["TGDL_GLOBAL_CAP"] == "4"
        assert spec.env["PATH"] == "/bin"
        assert spec.env["TGDL_TELEGRAM"] == "sim"
        assert spec.env["TGDL_SIM_URL"] == "http://127.0.0.1:8100"
        assert spec.env["TGDL_HTTP_PORT"] == "8000"
        assert spec.env["TGDL_SESSION_FILE"] == "/data/telegram.session"
        assert spec.env["PYTHONUNBUFFERED"] == "1"


def test_each_downloader_replica_has_its_own_name() -> None:
    specs = service_specs({}, _wiring(), downloaders=2)
    replicas = {s.name: s.env["TGDL_REPLICA"] for s in specs if s.env and "TGDL_REPLICA" in s.env}
    assert replicas == {"downloader-1": "downloader-1", "downloader-2": "downloader-2"}


def test_telethon_children_get_no_simulator() -> None:
    for spec in service_specs({}, _wiring(Source.telethon, sim_url=None), downloaders=1):
        assert spec.env is not None
        assert spec.env["TGDL_TELEGRAM"] == "telethon"
        assert "TGDL_SIM_URL" not in spec.env


def test_simulator_listens_on_loopback_at_the_chosen_port() -> None:
    spec = simulator_spec({"TGDL_SIM_BANDWIDTH": "1000"}, 43210, python="py")
    assert spec.argv == ["py", "-m", "tgdl.simtelegram"]
    assert spec.env is not None
    assert (spec.env["TGDL_SIM_HOST"], spec.env["TGDL_SIM_PORT"]) == ("127.0.0.1", "43210")
    assert spec.env["TGDL_SIM_BANDWIDTH"] == "1000"


# --- metrics ports ---------------------------------------------------------------------------


def test_a_metrics_base_port_gives_each_process_the_next_port_in_a_fixed_order() -> None:
    is_free, any_free = _ports(set(range(9300, 9310)))
    ports = metrics_ports({"TGDL_METRICS_PORT": "9300"}, 3, is_free, any_free)
    assert ports == {"orchestrator": 9300, "projector": 9301, "catalog": 9302,
                     "downloader-1": 9303, "downloader-2": 9304, "downloader-3": 9305}


def test_a_busy_port_of_the_base_range_is_an_error_naming_it() -> None:
    is_free, any_free = _ports({9300, 9301, 9302, 9304})
    with pytest.raises(ConfigError, match="port 9303 for the metrics of downloader-1"):
        metrics_ports({"TGDL_METRICS_PORT": "9300"}, 2, is_free, any_free)


@pytest.mark.parametrize("raw", ["nine", "0", "65534"])
def test_a_metrics_base_port_must_leave_room_for_every_process(raw: str) -> None:
    is_free, any_free = _ports(set())
    with pytest.raises(ConfigError, match="TGDL_METRICS_PORT"):
        metrics_ports({"TGDL_METRICS_PORT": raw}, 2, is_free, any_free)


def test_without_a_base_every_process_gets_a_distinct_free_port() -> None:
    handed = iter([41000, 41000, 41001, 41002, 41003, 41004])  # the system may repeat
    ports = metrics_ports({}, 2, lambda port: False, lambda: next(handed))
    assert ports == {"orchestrator": 41000, "projector": 41001, "catalog": 41002,
                     "downloader-1": 41003, "downloader-2": 41004}


def test_each_child_gets_only_its_own_metrics_port() -> None:
    ports = {"orchestrator": 9300, "projector": 9301, "catalog": 9302, "downloader-1": 9303,
             "downloader-2": 9304}
    wiring = Wiring(**{**_wiring().__dict__, "metrics_ports": ports})
    specs = service_specs({"TGDL_METRICS_PORT": "9300"}, wiring, downloaders=2)
    given = {s.name: s.env.get("TGDL_METRICS_PORT") for s in specs}
    assert given == {"gateway": None, **{name: str(port) for name, port in ports.items()}}
    assert "TGDL_METRICS_PORT" not in simulator_spec({"TGDL_METRICS_PORT": "9300"}, 1).env


def test_metrics_targets_list_every_process_for_prometheus(tmp_path: Path) -> None:
    targets = metrics_targets(("0.0.0.0", 8000), "127.0.0.1",
                              {"orchestrator": 9300, "downloader-1": 9302})
    assert targets == [
        {"targets": ["127.0.0.1:8000"], "labels": {"service": "gateway", "replica": "gateway"}},
        {"targets": ["127.0.0.1:9300"],
         "labels": {"service": "orchestrator", "replica": "orchestrator"}},
        {"targets": ["127.0.0.1:9302"],
         "labels": {"service": "downloader", "replica": "downloader-1"}},
    ]
    lines = metrics_banner(targets, tmp_path / "metrics-targets.json")
    assert "  downloader-1: http://127.0.0.1:9302/metrics" in lines
    assert str(tmp_path / "metrics-targets.json") in lines[0]


# --- what the user is told -------------------------------------------------------------------


def test_client_commands_find_the_gateway_of_the_run_in_their_data_folder(
        tmp_path: Path) -> None:
    env = {"TGDL_HOME": "data"}
    assert running_gateway(env, tmp_path) is None  # no `tgdl run` there
    (tmp_path / "data").mkdir()
    noted = Home.from_env(env, tmp_path).gateway
    noted.write_text(json.dumps({"url": "http://127.0.0.1:40123", "pid": os.getpid()}))
    assert running_gateway(env, tmp_path) == "http://127.0.0.1:40123"
    assert running_gateway({}, tmp_path) is None  # another data folder: ./.tgdl
    gone = subprocess.Popen(["true"])
    gone.wait()
    noted.write_text(json.dumps({"url": "http://127.0.0.1:40123", "pid": gone.pid}))
    assert running_gateway(env, tmp_path) is None  # left by a run that was killed
    noted.write_text("garbage")
    assert running_gateway(env, tmp_path) is None


def test_examples_use_downloadable_messages() -> None:
    entries = [
        CatalogEntry(message_id=9, chat="demo", telegram_message_id=9),  # no media
        *(CatalogEntry(message_id=i, chat="demo", telegram_message_id=i,
                       media_kind=MediaKind.photo) for i in (7, 3, 5)),
    ]
    assert example_ids(entries, count=2) == [3, 5]


def test_banner_shows_where_to_click_and_a_working_curl() -> None:
    text = "\n".join(ready_banner("http://127.0.0.1:8000", [1, 2, 3]))
    assert "http://127.0.0.1:8000/\n" in text
    assert "http://127.0.0.1:8000/docs" in text
    assert "/api/media/batch-download" in text
    assert '{"message_ids": [1, 2, 3], "max_concurrent": 3}' in text
    assert "/api/media/batch-status/" in text


# --- supervision policy ----------------------------------------------------------------------


def test_backoff_doubles_up_to_its_limit_and_resets_after_a_stable_run() -> None:
    backoff = Backoff(first=0.5, factor=2, limit=3, stable_after=30)
    delays, previous = [], None
    for _ in range(5):
        previous = backoff.next(previous, uptime=1)
        delays.append(previous)
    assert delays == [0.5, 1, 2, 3, 3]
    assert backoff.next(3, uptime=31) == 0.5


@pytest.mark.parametrize(
    ("code", "text"), [(0, "exited with code 0"), (3, "exited with code 3"),
                       (-15, "killed by SIGTERM"), (-9, "killed by SIGKILL")],
)
def test_exit_descriptions(code: int, text: str) -> None:
    assert describe_exit(code) == text


# --- command line ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv", [["run"], ["migrate"], ["rebuild-read-model"], ["login"], ["seed-demo"],
             ["sync", "@chan"], ["sync", "@chan", "--limit", "10"]],
)
def test_every_command_parses(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).command == argv[0]


def test_an_unknown_option_is_the_commands_error_under_its_usage(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["download", "1", "-c", "5"])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert "tgdl download: error: unrecognized arguments: -c 5" in err
    assert "--max-concurrent" in err  # the command's usage, not tgdl's


def test_every_commands_help_says_what_it_does(capsys) -> None:
    parser = build_parser()
    for name, command in parser.commands.items():
        assert command.description, f"tgdl {name} --help would show only its usage"
    with pytest.raises(SystemExit):
        parser.parse_args(["cancel", "--help"])
    assert "\nCancel a batch.\n" in capsys.readouterr().out


def test_a_command_is_required() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([])


def test_settings_come_from_the_given_environment_then_the_overrides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TGDL_DB_SCHEMA", "from_process")
    settings = settings_from(
        CommonSettings, {"TGDL_DB_SCHEMA": "given", "tgdl_global_cap": "3", "OTHER": "x"},
        nats_url="nats://resolved:4222",
    )
    assert (settings.db_schema, settings.global_cap) == ("given", 3)
    assert settings.nats_url == "nats://resolved:4222"


def test_invalid_settings_are_refused_naming_the_variable_to_fix() -> None:
    with pytest.raises(ConfigError) as refused:
        settings_from(CommonSettings, {"TGDL_DB_SCHEMA": "Robert'); DROP TABLE",
                                       "TGDL_GLOBAL_CAP": "abc"})
    assert str(refused.value) == (
        "TGDL_DB_SCHEMA=\"Robert'); DROP TABLE\": String should match pattern "
        "'^[a-z_][a-z0-9_]*$'; TGDL_GLOBAL_CAP='abc': Input should be a valid integer, "
        "unable to parse string as an integer")


def test_a_refused_secret_is_named_but_never_repeated() -> None:
    with pytest.raises(ConfigError) as refused:
        settings_from(CommonSettings, {"TGDL_NATS_URL": "nats://user:s3cret@host:4222"},
                      global_cap="many")
    assert "s3cret" not in str(refused.value)
    assert "TGDL_GLOBAL_CAP='many'" in str(refused.value)


def test_run_checks_every_services_settings_before_starting_anything() -> None:
    # a downloader's own setting, and a simulated Telegram's (only when it is used)
    env = {"TGDL_PARTS_PER_FILE": "abc", "TGDL_SIM_BANDWIDTH": "fast"}
    with pytest.raises(ConfigError) as refused:
        check_service_settings(env, simulated=True)
    assert str(refused.value) == (
        "TGDL_PARTS_PER_FILE='abc': Input should be a valid integer, unable to parse string "
        "as an integer; TGDL_SIM_BANDWIDTH='fast': Input should be a valid integer, unable "
        "to parse string as an integer")
    with pytest.raises(ConfigError, match="TGDL_PARTS_PER_FILE") as refused:
        check_service_settings(env, simulated=False)
    assert "TGDL_SIM_BANDWIDTH" not in str(refused.value)
    shared = {"TGDL_GLOBAL_CAP": "0"}  # every service reads it: said once
    with pytest.raises(ConfigError) as refused:
        check_service_settings(shared, simulated=True)
    assert str(refused.value) == "TGDL_GLOBAL_CAP='0': Input should be greater than or equal to 1"
    check_service_settings({}, simulated=True)  # the defaults work
    # the account's proxy is checked even with the simulated Telegram (the catalog service
    # reads it), and its password is never repeated
    with pytest.raises(ConfigError) as refused:
        check_service_settings({"TGDL_TELEGRAM_PROXY": "socks5://me:hunter2@proxy.lan"},
                               simulated=True)
    assert str(refused.value) == ("TGDL_TELEGRAM_PROXY: a socks5 proxy needs a host and a "
                                  "port, e.g. socks5://127.0.0.1:1080")
    assert "hunter2" not in str(refused.value)
