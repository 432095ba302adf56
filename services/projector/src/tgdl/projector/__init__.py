"""tgdl projector."""
