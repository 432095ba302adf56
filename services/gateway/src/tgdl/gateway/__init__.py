"""tgdl gateway."""
