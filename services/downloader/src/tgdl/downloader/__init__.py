"""tgdl downloader."""
