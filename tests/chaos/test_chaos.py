"""Faults injected mid-batch into a running `tgdl run`; every scenario checks every file's
SHA-256, that nothing was downloaded twice, that permits and the global cap held, that no
`.part` is left, and reports the stall (see harness.py)."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import nats
import psutil
import pytest
from harness import Sim, run_scenario, until

from tgdl.launcher.embedded import free_port, nats_server_binary
from tgdl.simtelegram import client as sim_client

MB = 1_000_000


def overlapping(sim: Sim, n: int = 12) -> list[tuple[list[int], int]]:
    """Three batches sharing files: the one-download-per-message rule under fire."""
    ids = sorted(sim.media())[:n]
    third = n // 3
    return [(ids[:2 * third], 3), (ids[third:], 2), (ids[::2], 3)]


@pytest.mark.parametrize("service", ["downloader-1", "orchestrator", "projector", "gateway"])
async def test_kill_9_a_service_mid_batch(start_tree, sim: Sim, record, service: str):
    tree = await start_tree()

    async def kill() -> None:
        tree.service(service).kill()

    record(await run_scenario(tree, f"kill -9 {service}", overlapping(sim), kill, 3 * MB))
    assert f"{service} killed by SIGKILL unexpectedly" in tree.log.read_text()


@pytest.mark.parametrize("server", ["nats-server", "PostgreSQL"])
async def test_kill_9_a_server_mid_batch(start_tree, sim: Sim, record, server: str):
    tree = await start_tree()

    async def kill() -> None:
        (tree.nats_server() if server == "nats-server" else tree.postmaster()).kill()

    record(await run_scenario(tree, f"kill -9 {server}", overlapping(sim), kill, 3 * MB))
    assert f"{server} restarted after" in tree.log.read_text()


async def test_power_loss_of_the_whole_tree_then_restart(start_tree, sim: Sim, record):
    tree = await start_tree()

    async def power_loss() -> None:
        tree.power_loss()
        tree.start()  # `make run` again, over the same data folder
        await tree.until_ready()

    record(await run_scenario(tree, "power loss, then tgdl run", overlapping(sim), power_loss,
                              3 * MB))


async def test_twenty_overlapping_batches_under_telegram_faults(start_tree, sim: Sim, record):
    tree = await start_tree()
    pool = sorted(sim.media())[:30]
    batches = [([pool[(i * 7 + k * 3) % len(pool)] for k in range(6)], 1 + i % 4)
               for i in range(20)]
    batches = [(sorted(set(ids)), cap) for ids, cap in batches]

    async def telegram_faults() -> None:
        await sim_client.set_faults(
            sim.url,
            flood_wait=[{"message_id": m, "seconds": 2} for m in pool[0:30:6]],
            expire_reference=[{"message_id": m, "times": 2} for m in pool[1:30:5]],
            drop=[{"message_id": m, "after_bytes": 150_000} for m in pool[2:30:4]],
        )

    record(await run_scenario(tree, "20 batches: flood waits, expired refs, drops",
                              batches, telegram_faults, 2 * MB, finish_within=300))


# --- a 3-node NATS cluster ---------------------------------------------------------------


class Cluster:
    def __init__(self, base: Path, size: int = 3) -> None:
        self.base = base
        self.client_ports = [free_port() for _ in range(size)]
        self.route_ports = [free_port() for _ in range(size)]
        self.processes: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        return ",".join(f"nats://127.0.0.1:{p}" for p in self.client_ports)

    def start(self) -> None:
        routes = ", ".join(f"nats://127.0.0.1:{p}" for p in self.route_ports)
        for i, (port, route) in enumerate(zip(self.client_ports, self.route_ports,
                                              strict=True)):
            data = self.base / f"n{i + 1}"
            data.mkdir(parents=True)
            conf = data / "nats.conf"
            conf.write_text(
                f"server_name: n{i + 1}\nhost: 127.0.0.1\nport: {port}\n"
                f'jetstream {{ store_dir: "{data / "js"}" }}\n'
                f"cluster {{ name: tgdl, listen: 127.0.0.1:{route}, routes: [{routes}] }}\n")
            self.processes.append(subprocess.Popen(
                [nats_server_binary(), "-c", str(conf)], stdin=subprocess.DEVNULL,
                stdout=(data / "nats.log").open("ab"), stderr=subprocess.STDOUT))

    async def until_ready(self) -> None:
        async def jetstream_answers() -> bool:
            with contextlib.suppress(Exception):
                nc = await nats.connect(servers=self.url.split(","), allow_reconnect=False)
                try:
                    await nc.jetstream().account_info()
                    return True
                finally:
                    await nc.close()
            return False
        await until(jetstream_answers, 60, "the cluster's JetStream", every=0.5)

    def busiest(self) -> subprocess.Popen:
        """The node with the most client connections (the one to hurt)."""
        counts = [0] * len(self.client_ports)
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_ESTABLISHED and c.laddr and \
                    c.laddr.port in self.client_ports:
                counts[self.client_ports.index(c.laddr.port)] += 1
        return self.processes[counts.index(max(counts))]

    def stop(self) -> None:
        for p in self.processes:
            if p.poll() is None:
                p.terminate()
        for p in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)
            if p.poll() is None:
                p.kill()


@pytest.fixture
async def cluster(tmp_path: Path):
    """Requested before `start_tree`, so it outlives the `tgdl run` using it."""
    cluster = Cluster(tmp_path / "cluster")
    cluster.start()
    try:
        await cluster.until_ready()
        yield cluster
    finally:
        cluster.stop()


async def test_a_3_node_cluster_loses_the_node_the_services_use(cluster: Cluster, start_tree,
                                                                sim: Sim, record):
    tree = await start_tree(TGDL_NATS_URL=cluster.url, TGDL_STREAM_REPLICAS="3")

    async def kill_node() -> None:
        cluster.busiest().kill()

    record(await run_scenario(tree, "3-node cluster, busiest node killed", overlapping(sim),
                              kill_node, 3 * MB))
