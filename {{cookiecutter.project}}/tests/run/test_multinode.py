"""Two machines, one run: `trainer.num_nodes=2` started as the README says, with torchrun on every node, here two
torchrun launches on the loopback interface (node ranks 0 and 1, one gloo process each, node 0's address as the
rendezvous). They train one run in one folder (`hydra.run.dir`, the same on both nodes) with the numbers of a
one-node `trainer=ddp_cpu` run of the same world size: two processes, the same data shares, the same all-reduce.

Every run is a subprocess (torchrun is this interpreter's `python -m torch.distributed.run`); a run that hangs is
stopped at DEADLINE_S, an upper bound that only a hang reaches (the test's own limit, stretched on a busy machine
by tests/conftest.py, is above it).
"""

import contextlib
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import PROJECT_ROOT, assert_same_curves, run_dirs, run_train, scalars

from {{ cookiecutter.package }}.run.checkpoint import load_checkpoint, model_state_dict

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

ENGINES = ("raw", "lightning", "fabric")
RUN = ["trainer=ddp_cpu", "trainer.max_epochs=2", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false"]
# A few batches per epoch where the engine has the keys (fabric, a rung of the ladder, leaves them out: whole epochs)
SHORTER = {
    "raw": ["trainer.limit_train_batches=3", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2"],
    "lightning": ["trainer.limit_train_batches=3", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2"],
    "fabric": [],
}
DEADLINE_S = 600  # the most one run may take: seconds unloaded, tens of them on a busy machine
TAGS = ("train/loss", "lr", "train/grad_norm", "val/loss", "val/acc", "test/loss", "test/acc")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def explain(command: list[str], returncode: int | None, out: Path, run_dir: Path) -> str:
    logs = "".join(f"\n--- {log} ---\n{log.read_text(errors='replace')}" for log in sorted(run_dir.glob("rank*.log")))
    return f"{subprocess.list2cmdline(command)}\nexit code {returncode}\n--- output ---\n{out.read_text()}{logs}"


def train_on_two_nodes(engine: str, run_dir: Path, log_dir: Path) -> None:
    """The README's command on each of two nodes, both started at once; both must finish with status 0."""
    port = free_port()
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    nodes = []
    for node_rank in (0, 1):
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={node_rank}",
            "--nproc-per-node=1", "--master-addr=127.0.0.1", f"--master-port={port}",
            "train.py", f"engine={engine}", *RUN, *SHORTER[engine], "trainer.devices=1", "trainer.num_nodes=2",
            f"paths.log_dir={log_dir}", f"hydra.run.dir={run_dir}",
        ]  # fmt: skip
        out = run_dir.parent / f"node{node_rank}.out"
        with out.open("w") as output:
            nodes.append((command, out, subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=output, stderr=output)))
    try:
        for command, out, node in nodes:
            try:
                node.wait(timeout=DEADLINE_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"still running after {DEADLINE_S} s\n{explain(command, None, out, run_dir)}")
            assert node.returncode == 0, explain(command, node.returncode, out, run_dir)
    finally:
        for _, _, node in nodes:
            if node.poll() is None:
                node.terminate()  # torchrun passes it on to its worker
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.wait(timeout=90)
                if node.poll() is None:
                    node.kill()
                    node.wait()


@pytest.mark.parametrize("engine", ENGINES)
def test_two_nodes_train_one_run_in_one_folder_with_the_numbers_of_one_node(engine, tmp_path, monkeypatch):
    # One thread per process in both runs (one node's two processes would get one core each, each node's one
    # process both): the thread count changes the order of the float sums in a convolution.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    one_node_logs = tmp_path / "one-node"
    result = run_train(one_node_logs, f"engine={engine}", *RUN, *SHORTER[engine], timeout=DEADLINE_S)
    assert result.returncode == 0, result.stdout + result.stderr
    (one_node,) = run_dirs(one_node_logs, engine)

    two_nodes, two_node_logs = tmp_path / "two-nodes" / "run", tmp_path / "two-nodes" / "logs"
    train_on_two_nodes(engine, two_nodes, two_node_logs)

    # One run, in the folder both nodes were given: rank 0 (node 0) wrote its results, rank 1 (node 1) its log.
    assert not two_node_logs.exists() or run_dirs(two_node_logs, engine) == []
    assert (two_nodes / "rank1.log").is_file() and not (two_nodes / "rank0.log").exists()
    summary, expected_summary = (json.loads((run / "metrics.json").read_text()) for run in (two_nodes, one_node))
    assert summary["processes"] == expected_summary["processes"] == 2, summary
    for key in ("epochs", "global_step", "val/acc", "test/acc", "best_score"):
        assert summary[key] == expected_summary[key], key
    writers = {path.name.split(".")[-2] for path in (two_nodes / "tensorboard").glob("events.out.tfevents.*")}
    assert len(writers) == 1, writers  # one process wrote events (its id is in each file's name)

    # The numbers of the one-node run: every step's train/loss, every epoch's val/*, the test, the weights.
    expected, got = scalars(one_node), scalars(two_nodes)
    assert len(got["train/loss"]) == summary["global_step"] > 2
    assert got.keys() == expected.keys()  # fabric logs no train/grad_norm
    assert_same_curves(expected, got, tuple(tag for tag in TAGS if tag in expected), tolerance=1e-6)
    for name in ("last.ckpt", "best.ckpt"):
        weights = model_state_dict(load_checkpoint(one_node / "checkpoints" / name))
        two_node_weights = model_state_dict(load_checkpoint(two_nodes / "checkpoints" / name))
        assert weights.keys() == two_node_weights.keys()
        assert [key for key in weights if not torch.equal(weights[key], two_node_weights[key])] == [], name
