"""requirements.lock pins, with hashes, every package the tree names: the install takes
nothing else (`make lock` refreshes it after a pin changes)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if m := PIN.match(line):
            pins[canonical(m.group(1))] = m.group(3)
    return pins


def named_pins() -> dict[str, tuple[str, str]]:
    """Every pinned third-party requirement: name -> (version, where it is named)."""
    named = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if m := PIN.match(line.strip()):
            named[canonical(m.group(1))] = (m.group(3), "requirements.txt")
    for pyproject in sorted(ROOT.glob("*/*/pyproject.toml")):
        project = tomllib.loads(pyproject.read_text())["project"]
        for requirement in project.get("dependencies", []):
            if requirement.startswith("tgdl-"):
                continue
            m = PIN.match(requirement)
            assert m, f"{pyproject.relative_to(ROOT)}: {requirement!r} is not pinned (==)"
            named[canonical(m.group(1))] = (m.group(3), str(pyproject.relative_to(ROOT)))
    return named


def test_every_pin_of_the_tree_is_in_the_lock_at_the_same_version():
    lock = locked()
    for name, (version, where) in named_pins().items():
        assert lock.get(name) == version, (
            f"{name}=={version} ({where}) is not in requirements.lock as such: run `make lock`")


def test_every_locked_package_carries_hashes():
    text = (ROOT / "requirements.lock").read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.strip())
    assert entries and all("--hash=sha256:" in e for e in entries if PIN.match(e))
