"""tgdl orchestrator."""
