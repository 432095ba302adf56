"""tgdl simtelegram."""
