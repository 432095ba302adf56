"""`python -m tgdl.launcher`: the same as the `tgdl` command."""

from tgdl.launcher.cli import main

raise SystemExit(main())
