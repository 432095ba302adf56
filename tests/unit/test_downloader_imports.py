"""A downloader on the simulated Telegram never imports Telethon (its TL schema alone
is tens of MB of a process that otherwise idles at about 60 MB)."""

from __future__ import annotations

import subprocess
import sys


def test_the_simulated_adapter_leaves_telethon_unimported():
    code = ("import sys; import tgdl.downloader.app, tgdl.downloader.telegram.simulated; "
            "from tgdl.downloader.app import build_port; "
            "from tgdl.downloader.settings import DownloaderSettings; "
            "build_port(DownloaderSettings(telegram='sim', sim_url='http://127.0.0.1:1')); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'telethon'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout
