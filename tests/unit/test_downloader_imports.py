"""What a downloader process imports: on the simulated Telegram never Telethon (its TL
schema alone is tens of MB of a process that otherwise idles at about 53 MB), and never
the command-line tools its libraries bring along (uvicorn through FastStream; click, rich
and pygments through httpx's CLI: about 4 MB). Each in a fresh interpreter, as
`python -m tgdl.downloader` starts: the test process has them all loaded."""

from __future__ import annotations

import subprocess
import sys

TOOLS = ("uvicorn", "click", "rich", "pygments")


def run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_the_simulated_adapter_leaves_telethon_unimported():
    code = ("import sys; import tgdl.downloader.app, tgdl.downloader.telegram.simulated; "
            "from tgdl.downloader.app import build_port; "
            "from tgdl.downloader.settings import DownloaderSettings; "
            "build_port(DownloaderSettings(telegram='sim', sim_url='http://127.0.0.1:1')); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'telethon'))")
    out = run(code)
    assert out == "[]", out


def loaded_tools(prepare: str) -> list[str]:
    return run(f"import sys; {prepare}; "
               "import tgdl.downloader.app, tgdl.downloader.telegram.simulated, tgdl.runtime; "
               f"print(' '.join(m for m in {TOOLS!r} if sys.modules.get(m) is not None))"
               ).split()


def test_the_downloader_process_leaves_out_the_tools_it_never_runs():
    assert loaded_tools("import tgdl.downloader.__main__") == []  # what `-m` runs first
    assert loaded_tools("pass") == list(TOOLS)  # without it they would be loaded
