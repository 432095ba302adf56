"""tgdl launcher."""
