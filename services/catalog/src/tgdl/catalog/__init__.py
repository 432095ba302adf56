"""tgdl catalog service: chat sync, watch rules, Telegram's new messages."""
