"""`dckp table --address`: a two-node Ray cluster on this machine (`ray start --head`, then a second `ray start
--address` with its own CPU and a resource of its own), a tiny table run against it, and the evaluation records
showing that its episodes ran on both nodes. The cluster is stopped however the test ends: each `ray start --block`
runs in a process group of its own, which the fixture ends (its own processes only; `ray stop` would end every Ray
process on the machine)."""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from dckp.cli.main import main

pytestmark = pytest.mark.xdist_group("ray")  # one pytest worker runs every Ray test: never two Ray instances at once
ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}  # loopback, this machine only


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(procs: list[subprocess.Popen]) -> None:
    """End each `ray start --block` and everything it started (its process group): SIGTERM, and SIGKILL for what is
    left after 3 s (a throwaway cluster: nothing to save)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in procs:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:  # every process of the group has ended
                pass
        if sig == signal.SIGTERM:
            time.sleep(3)
    for proc in procs:
        proc.wait(10)


@pytest.fixture
def two_nodes(monkeypatch):
    """The address of a head node (1 CPU) and a second node (1 CPU, resource `second_node`) on this machine."""
    import ray

    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    port, temp = _port(), tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths have a limit
    ray_cli = str(Path(sys.executable).with_name("ray"))
    common = ["--block", "--num-cpus=1", "--disable-usage-stats", "--include-log-monitor=false"]
    procs = []

    def start(*args):
        ports = [f"--dashboard-agent-listen-port={_port()}", f"--metrics-export-port={_port()}"]
        procs.append(subprocess.Popen([ray_cli, "start", *args, *common, *ports], start_new_session=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **ENV}))

    try:
        start("--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--include-dashboard=false",
              f"--temp-dir={temp}")
        start(f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1", '--resources={"second_node": 1}')
        address, deadline = f"127.0.0.1:{port}", time.time() + 90
        while True:  # until both nodes have joined
            try:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
                if sum(n["Alive"] for n in ray.nodes()) == 2:
                    break
            except ConnectionError:
                pass
            finally:
                ray.shutdown()
            assert time.time() < deadline, "the two-node cluster did not start"
            assert all(p.poll() is None for p in procs), "a `ray start` exited"
            time.sleep(1)
        yield address
    finally:
        ray.shutdown()
        _stop(procs)
        subprocess.run(["rm", "-rf", temp], check=False)


def test_table_spreads_episodes_over_two_nodes(tmp_path, two_nodes):
    import ray

    out = tmp_path / "run"
    assert main(["table", "--address", two_nodes, "--tasks", "lift", "--methods", "blind", "--demos", "1",
                 "--image-size", "64", "--policy-steps", "2", "--episodes", "2", "--chunk", "1", "--max-steps", "5",
                 "--out", str(out), "--results", str(tmp_path / "results")]) == 0
    assert not ray.is_initialized()  # the runner disconnected from the cluster it did not start
    ev = json.loads((out / "lift" / "policy_blind" / "eval" / "eval.json").read_text())
    assert [c["seeds"] for c in ev["chunks"]] == [[1_000_000, 1_000_000], [1_000_001, 1_000_001]]
    assert len({c["node"] for c in ev["chunks"]}) == 2  # one chunk on each node
    assert json.loads((tmp_path / "results" / "table1.json").read_text())["cells"]["lift"]["blind"]["episodes"] == 2


def test_without_address_ray_starts_locally_beside_a_cluster(monkeypatch, two_nodes):
    """`RAY_ADDRESS` names a running cluster, as after `ray start`: without `--address` the runner still starts a
    Ray instance of its own (one node, its own GCS), as the README promises, instead of joining that cluster."""
    import ray

    from dckp.table.runner import start_ray

    monkeypatch.setenv("RAY_ADDRESS", two_nodes)
    try:
        assert start_ray(cpus=1)
        assert len(ray.nodes()) == 1
        assert ray.get_runtime_context().gcs_address != two_nodes
    finally:
        ray.shutdown()
