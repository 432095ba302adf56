"""`python -m tgdl.downloader`, as `tgdl run` starts each replica.

Two libraries load a command-line tool of theirs with themselves, which a downloader never
runs: FastStream imports uvicorn (to serve an ASGI app from its CLI) and httpx its own
client CLI (click, rich, pygments). Marked absent before anything is imported, they fail
to import as if not installed, and both libraries carry on without them: about 4 MB less
in every replica. Only here, in the downloader's own process: the gateway runs uvicorn.
"""

import sys

UNUSED = ("uvicorn", "httpx._main")
for _name in UNUSED:
    sys.modules.setdefault(_name, None)  # type: ignore[arg-type]

from tgdl.downloader.app import main  # noqa: E402

if __name__ == "__main__":
    main()
