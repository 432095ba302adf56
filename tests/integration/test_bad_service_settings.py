"""A service started on its own (compose, a unit file) with a setting that cannot work
says which variable, in one line, and exits 2: no traceback, nothing a restart fixes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tgdl.runtime import CONFIG_ERROR


@pytest.mark.parametrize(("module", "service", "variable", "value"), [
    ("tgdl.gateway", "gateway", "TGDL_HTTP_PORT", "eighty"),
    ("tgdl.orchestrator", "orchestrator", "TGDL_GLOBAL_CAP", "0"),
    ("tgdl.projector", "projector", "TGDL_NAMESPACE", "two words"),
    ("tgdl.catalog", "catalog", "TGDL_MAX_BATCH_IDS", "lots"),
    ("tgdl.downloader", "downloader", "TGDL_PARTS_PER_FILE", "abc"),
    ("tgdl.simtelegram", "simtelegram", "TGDL_SIM_BANDWIDTH", "fast"),
])
def test_a_bad_setting_is_one_line_naming_it_and_exit_code_2(module, service, variable,
                                                             value):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TGDL_")}
    run = subprocess.run([sys.executable, "-m", module], env={**env, variable: value},
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == CONFIG_ERROR, run.stdout + run.stderr
    assert run.stderr.startswith(f"{service} cannot start: {variable}={value!r}: ")
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
