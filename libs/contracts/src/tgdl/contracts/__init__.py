"""Contracts shared by every tgdl service: no I/O, only models, names and pure rules."""
