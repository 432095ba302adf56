"""The chaos suite runs only when asked (`make chaos`, or TGDL_CHAOS=1): each scenario
starts a whole `tgdl run` and takes about half a minute to a minute. The stall measured
in each scenario is printed at the end of the run."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from harness import Outcome, Sim, Tree

OUTCOMES: list[Outcome] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("TGDL_CHAOS"):
        return
    skip = pytest.mark.skip(reason="the chaos suite runs with `make chaos` (TGDL_CHAOS=1)")
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter) -> None:
    if not OUTCOMES:
        return
    write = terminalreporter.write_line
    write("")
    write("chaos, after each fault: stall = longest time without a byte from Telegram; "
          "file stall = longest a downloading file got no byte")
    write(f"{'fault':<44} {'stall s':>8} {'file stall s':>13} {'done in s':>10} {'files':>6} "
          f"{'max served':>11}")
    for o in OUTCOMES:
        write(f"{o.fault:<44} {o.stall:>8.1f} {o.file_stall:>13.1f} {o.duration:>10.1f} "
              f"{o.files:>6} {o.max_serving:>11}")


@pytest.fixture
def record():
    return OUTCOMES.append


@pytest.fixture
def sim(tmp_path: Path):
    sim = Sim(tmp_path)
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
async def start_tree(tmp_path: Path, sim: Sim) -> AsyncIterator:
    """`await start_tree(**env)`: a `tgdl run` with these TGDL_* settings, ready; at the
    end it must stop cleanly (exit 0) and its output must hold no traceback."""
    trees: list[Tree] = []

    async def start(**env: str) -> Tree:
        tree = Tree(tmp_path, sim, extra_env=env)
        trees.append(tree)
        tree.start()
        await tree.until_ready()
        return tree

    try:
        yield start
        for tree in trees:
            assert tree.stop() == 0, tree.tail()
            assert "Traceback" not in tree.log.read_text(errors="replace"), tree.tail()
    finally:
        for tree in trees:
            if tree.process is not None and tree.process.poll() is None:
                tree.power_loss()
