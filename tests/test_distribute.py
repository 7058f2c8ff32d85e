"""Distributed training: real workers on localhost, logical devices, and every cluster mistake.

The two-worker runs start two CLI processes on free loopback ports, as the README's "Many
machines" shows, each bounded by a timeout. Their per-epoch numbers are compared with one process
training the same global batch of 80 with the same seed: dropout is off (a replica draws the masks
of its half batch, so the draws differ from one process's, as any per-device dropout would), and
the tolerance is float rounding. The two halves' gradients are summed by an all-reduce, in
another order than one process sums the batch, so the weights differ by about an ulp after the
first step; over these two epochs the losses agree to 9e-8 relative (measured: the first epoch
exactly) and the accuracies exactly; ``RTOL`` leaves room for other CPUs.
"""

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY

from paper_repro import cli, cluster, data, training
from paper_repro.errors import UserError
from paper_repro.history import ClusterRecord, History, HistoryError, load_history
from paper_repro.training import fit as fit_module

REPO = Path(__file__).resolve().parents[1]
# The tiny run in 2 global batches of 80 an epoch (fewer all-reduces keep the reordered sums
# within RTOL), 2 epochs, no dropout (see above).
DISTRIBUTED = [*TINY, "batch_size=80", "epochs=2", "dropout=0"]
RTOL = 1e-5
WORKER_SECONDS = 240  # one worker's whole run on a loaded 2-core machine takes well under this


def _metrics(history) -> np.ndarray:
    return np.array(
        [(e.train_loss, e.train_accuracy, e.test_accuracy, e.lr) for e in history.epochs]
    )


def _free_ports(count: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]


def _tf_config(ports: list[int], index: int) -> str:
    workers = [f"localhost:{port}" for port in ports]
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def _start_workers(runs: Path, ports: list[int]) -> list[subprocess.Popen]:
    """Every worker of the cluster: the same command, its own TF_CONFIG (as any launcher). The
    augmentation runs in the training step: the same pixels as the reference's host path."""
    overrides = [*DISTRIBUTED, "augment_on=device"]
    command = [sys.executable, "-m", "paper_repro.cli", "train", "full-mnist", "--preset",
               "smoke", "--strategy", "multi-worker", "--runs-dir", str(runs), "--join-timeout",
               "60", *(a for o in overrides for a in ("--set", o))]  # fmt: skip
    quiet = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return [
        subprocess.Popen(
            command,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**quiet, "TF_CONFIG": _tf_config(ports, i)},
        )
        for i in range(len(ports))
    ]


def _finish(workers: list[subprocess.Popen]) -> list[str]:
    outputs = []
    for worker in workers:
        try:
            output, _ = worker.communicate(timeout=WORKER_SECONDS)
        except subprocess.TimeoutExpired:
            for w in workers:
                w.kill()
            raise
        assert worker.returncode == 0, output[-3000:]
        outputs.append(output)
    return outputs


def _history_file(runs: Path) -> Path:
    return runs / "smoke" / "full-mnist" / "history.json"


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tfds_dir):
    """The reference: one process, the same global batch and seed."""
    runs = tmp_path_factory.mktemp("one")
    return training.train("full-mnist", "smoke", runs_dir=runs, overrides=DISTRIBUTED, verbose=0)


@pytest.mark.slow
def test_two_workers_train_as_one_process_and_resume_after_a_kill(one_process, tmp_path):
    """One two-worker run, killed after its first checkpoint and restarted, must end where one
    process ends: the resume is exact, and the cluster trains as one process to float rounding."""
    runs, ports = tmp_path / "runs", _free_ports(2)
    workers = _start_workers(runs, ports)
    checkpoint = _history_file(runs).with_name("checkpoint.keras")
    while not checkpoint.exists() and workers[0].poll() is None:  # pytest-timeout bounds it
        time.sleep(0.05)
    assert checkpoint.exists() and workers[0].poll() is None, "no epoch to resume from"
    workers[1].send_signal(signal.SIGKILL)
    # The chief notices within seconds that its peer stopped, and says so in one line.
    output, _ = workers[0].communicate(timeout=120)
    workers[1].wait()
    assert workers[0].returncode == 2, output[-3000:]
    assert "a worker of the cluster stopped during training" in output
    interrupted = load_history(_history_file(runs))
    assert interrupted.status == "running" and len(interrupted.epochs) == 1
    np.testing.assert_allclose(_metrics(interrupted), _metrics(one_process)[:1], rtol=RTOL)

    outputs = _finish(_start_workers(runs, ports))
    assert all("resuming after epoch 1" in output for output in outputs)
    history = load_history(_history_file(runs))
    assert history.status == "finished"
    assert history.cluster == ClusterRecord("multi-worker", workers=2, devices_per_worker=1)
    np.testing.assert_allclose(_metrics(history), _metrics(one_process), rtol=RTOL, atol=0)
    assert history.final.top1 == pytest.approx(one_process.final.top1, abs=1e-6)
    # Only the chief writes the run directory; the other worker's files were temporary.
    run = _history_file(runs).parent
    assert sorted(p.name for p in run.iterdir()) == ["history.json", "model.keras", "run.lock"]
    assert all(f"{run}: 5-crop top-1" in output for output in outputs)


def test_a_worker_cannot_start_after_other_epochs_than_the_chief(monkeypatch):
    """A worker that cannot read the chief's run directory would start over: refused."""
    where = dataclasses.replace(cluster.connect("default"), name="multi-worker")
    monkeypatch.setattr(cluster.Cluster, "gather", lambda self, value: [value, 0])
    with pytest.raises(UserError, match=r"start after epochs \[0, 1\].*shared file system"):
        fit_module._check_same_start(where, 1)


@pytest.mark.parametrize(
    "tf_config, message",
    [
        ("{'cluster': ", "TF_CONFIG is not valid JSON"),
        ('{"task": {"type": "worker", "index": 0}}', "TF_CONFIG needs 'cluster' as a JSON object"),
        ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}',
         "task index 2 is out of range: the cluster has 2 worker task(s), indices 0..1"),
        ('{"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, "task": {"type": "worker", "index": 0}}',
         "cluster has ps tasks"),
        ('{"cluster": {"worker": ["a:1", "a:1"]}, "task": {"type": "worker", "index": 0}}',
         "lists a:1 twice"),
        ('{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}',
         "list of 'host:port' strings"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}',
         "task type 'chief' is not a job of its cluster"),
    ],
)  # fmt: skip
def test_a_bad_tf_config_is_one_line_before_anything_starts(
    tf_config, message, monkeypatch, capsys
):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    args = ["train", "full-mnist", "--preset", "smoke", "--strategy", "multi-worker"]
    assert cli.main([*args, "--runs-dir", "/nonexistent/never-made"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_a_history_names_its_cluster_and_a_bad_one_is_refused():
    record = json.loads((REPO / "tests/fixtures/histories/full-mnist/history.json").read_text())
    record["cluster"] = {"strategy": "multi-worker", "workers": 2, "devices_per_worker": 1}
    assert History.from_dict(record).cluster == ClusterRecord("multi-worker", 2, 1)
    record["cluster"]["devices_per_worker"] = 0
    with pytest.raises(HistoryError, match=r"cluster.devices_per_worker must be at least 1, got 0"):
        History.from_dict(record)


def test_the_chief_is_worker_zero_and_workers_follow_it():
    config = {"cluster": {"chief": ["c:1"], "worker": ["w:2", "w:3"]},
              "task": {"type": "worker", "index": 1}}  # fmt: skip
    assert cluster.read_tf_config(json.dumps(config)) == (["c:1", "w:2", "w:3"], 2)


def test_an_unreachable_peer_is_one_line_after_the_join_timeout(monkeypatch, capsys):
    """The peer's port has no listener (a worker never started, or a wrong address): without
    the deadline, TensorFlow's strategy would wait for it forever."""
    monkeypatch.setenv("TF_CONFIG", _tf_config(_free_ports(2), 0))
    args = ["train", "full-mnist", "--preset", "smoke", "--strategy", "multi-worker"]
    start = time.monotonic()
    assert cli.main([*args, "--join-timeout", "1.5", "--runs-dir", "/nonexistent/never"]) == 2
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "worker 1 (localhost:" in err and "did not join the cluster within 1.5 s" in err


def test_workers_meet_whatever_order_they_start_in():
    ports = _free_ports(3)
    addresses = [f"localhost:{port}" for port in ports]
    errors = []

    def worker(index: int) -> None:
        time.sleep(0.3 * index)  # a launcher starts them one after the other
        try:
            cluster.rendezvous(addresses, index, timeout=20)
        except UserError as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in (2, 0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors and not any(thread.is_alive() for thread in threads)


def test_each_image_of_a_batch_goes_to_one_replica_in_order():
    batches = tf.data.Dataset.range(13).batch(5)  # batches of 5, 5, 3
    parts = [
        [b.tolist() for b in data.shard_batches(batches, shard).as_numpy_iterator()]
        for shard in (data.Shard(0, 1, 2), data.Shard(1, 1, 2), data.Shard(0, 2, 2))
    ]
    assert parts[0] == [[0, 1], [5, 6], [10]]
    assert parts[1] == [[2, 3, 4], [7, 8, 9], [11, 12]]
    assert parts[2] == [[0, 1], [2, 3, 4], [5, 6], [7, 8, 9], [10], [11, 12]]


_TWO_DEVICES = """
import json, sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from paper_repro.training import train
h = train(sys.argv[2], "smoke", runs_dir=sys.argv[1], strategy="mirrored", verbose=0,
          overrides=json.loads(sys.argv[3]))
print(json.dumps({"cluster": [h.cluster.workers, h.cluster.devices_per_worker],
                  "metrics": [[e.train_loss, e.train_accuracy, e.test_accuracy, e.lr]
                              for e in h.epochs],
                  "top1": h.final.top1}))
"""


@pytest.mark.parametrize(
    "experiment, feed",
    [("full-mnist", "augment_on=device"), ("retrain-random-mnist", "cache_features=true")],
)
@pytest.mark.slow
def test_two_logical_devices_train_as_one(experiment, feed, one_process, tmp_path):
    """``--strategy mirrored`` over two logical CPUs (in a process of its own, which configures
    them before TensorFlow starts) against one device: with the augmentation in the training step
    (against the host's, which cuts the same pixels), then on cached features."""
    overrides = [*DISTRIBUTED, feed]
    if feed.startswith("cache"):
        single = training.train(
            experiment, "smoke", runs_dir=tmp_path / "one", overrides=overrides, verbose=0
        )
    else:
        single = one_process
    command = [sys.executable, "-c", _TWO_DEVICES, str(tmp_path / "two"), experiment,
               json.dumps(overrides)]  # fmt: skip
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    mirrored = json.loads(out.stdout.splitlines()[-1])
    assert mirrored["cluster"] == [1, 2] and single.cluster is None
    np.testing.assert_allclose(mirrored["metrics"], _metrics(single), rtol=RTOL, atol=0)
    assert mirrored["top1"] == pytest.approx(single.final.top1, abs=1e-6)
