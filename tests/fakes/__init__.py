"""Fakes of external systems, for tests."""
