"""Where a run trains: one device, the devices of one machine, or a cluster of machines.

``connect`` turns ``--strategy`` into a ``Cluster``: the tf.distribute strategy and what the
trainer needs to know of it (how many workers and devices, whether this process is the chief,
how to shard its data, how to wait for the others). Every process of a multi-worker run runs the
same command; ``TF_CONFIG`` (the standard tf.distribute variable, set per process by any launcher)
names the cluster and this process's place in it.

The rule for the data (``data.Shard``): every step trains on one global batch of the run's
``batch_size`` (the paper's 80), the same images in the same order as one process would; replica
``r`` of ``R`` takes the contiguous part ``[r n / R, (r + 1) n / R)`` of each batch of ``n``
images, so each image is seen once per epoch, by one replica, and only that replica's worker reads
and augments it. Keras averages the replicas' mean losses, which is the batch's mean loss when the
parts are equal (``R`` divides the batch: 80 on 2, 4, 5, 8, 10, 16 replicas); otherwise images of
smaller parts weigh slightly more.

Three things here are written by hand, each because TensorFlow 2.21 / Keras 3.15 lack it:

* ``read_tf_config``: TensorFlow reads ``TF_CONFIG`` lazily and reports a bad one deep inside
  strategy creation (or not at all: an index out of range hangs); it is validated up front.
* ``rendezvous``: a worker whose peer never starts blocks forever inside the strategy's
  constructor (``context.ensure_initialized``, in C++, holding the GIL and ignoring SIGTERM;
  the coordination service's ``cluster_register_timeout`` only bounds the non-leader tasks), so
  the workers first meet over plain TCP on their own ports, with a deadline.
* ``_KerasMultiWorkerStrategy`` and ``fit_scope``: Keras 3's ``fit`` under
  ``MultiWorkerMirroredStrategy`` fails twice (keras-team/keras#20585): it reduces each step's
  scalar logs with ``reduce("MEAN", value, axis=0)``, invalid for scalars, and it all-reduces the
  first input batch (a nested structure of uint8 images, which TF's collective reduce neither
  maps over nor supports) only to learn its shapes.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import keras
import tensorflow as tf

from paper_repro.data import Shard
from paper_repro.errors import UserError
from paper_repro.experiments import JOIN_TIMEOUT, STRATEGIES
from paper_repro.history import ClusterRecord

_TASK_TYPES = ("chief", "worker")
# What a collective raises when a peer dies (its heartbeats stop, then the ops are aborted).
_LOST_PEER = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError)
_POLL = 0.2


@dataclass(frozen=True)
class Cluster:
    """The strategy a run trains under and this process's place in it."""

    name: str  # one of experiments.STRATEGIES
    strategy: tf.distribute.Strategy
    workers: int
    worker: int  # this process's index among the workers (the chief is 0)
    devices_per_worker: int

    @property
    def distributed(self) -> bool:
        return self.name != "default"

    @property
    def multi_worker(self) -> bool:
        """More than one process: each feeds its own replicas, Keras' fit needs ``fit_scope``."""
        return self.workers > 1

    @property
    def is_chief(self) -> bool:
        """The one process that writes the run's files (tf.distribute's chief: worker 0)."""
        return self.worker == 0

    @property
    def replicas(self) -> int:
        return self.workers * self.devices_per_worker

    def record(self) -> ClusterRecord | None:
        """What the history says of the cluster; None on one device (histories stay as before)."""
        if not self.distributed:
            return None
        return ClusterRecord(self.name, self.workers, self.devices_per_worker)

    def distribute(self, batches: Callable[[Shard | None], tf.data.Dataset]):
        """``batches(shard)`` for this worker's replicas, as ``fit`` takes it.

        On one machine, the dataset of global batches itself: Keras splits each batch among the
        local devices by the same rule (tf.data's rebatching into contiguous equal parts). On
        several, a distributed dataset built per worker (``distribute_datasets_from_function``:
        nothing is auto-sharded, a worker reads only its replicas' parts of every global batch,
        in replica order), where Keras' own distribution would have every worker read every
        batch whole (``AutoShardPolicy.DATA``, as in-memory datasets have no files to shard).
        """
        if not self.multi_worker:
            return batches(None)

        def for_worker(context: tf.distribute.InputContext) -> tf.data.Dataset:
            local = context.num_replicas_in_sync // context.num_input_pipelines
            first = context.input_pipeline_id * local
            return batches(Shard(first, local, context.num_replicas_in_sync))

        return self.strategy.distribute_datasets_from_function(for_worker)

    def gather(self, value: int) -> list[int]:
        """``value`` of every replica, in replica order: a collective, so it also waits for every
        worker to get there (a barrier)."""
        if not self.multi_worker:
            return [value]
        values = self.strategy.experimental_distribute_values_from_function(
            lambda _: tf.constant([value], tf.int64)
        )
        return [int(v) for v in self.strategy.gather(values, axis=0).numpy()]


def connect(name: str, join_timeout: float = JOIN_TIMEOUT) -> Cluster:
    """The ``Cluster`` for ``--strategy NAME``; for ``multi-worker``, after every worker of
    ``TF_CONFIG`` has answered within ``join_timeout`` seconds."""
    if name == "default":
        return Cluster(name, tf.distribute.get_strategy(), 1, 0, 1)
    if name == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
        return Cluster(name, strategy, 1, 0, strategy.num_replicas_in_sync)
    if name != "multi-worker":
        raise UserError(f"unknown strategy '{name}'; use one of {', '.join(STRATEGIES)}")
    if "TF_CONFIG" not in os.environ:
        raise UserError(
            "--strategy multi-worker needs TF_CONFIG describing the cluster, e.g. "
            '{"cluster": {"worker": ["host1:2222", "host2:2222"]}, '
            '"task": {"type": "worker", "index": 0}}'
        )
    if not join_timeout > 0:
        raise UserError(f"--join-timeout must be a positive number of seconds, got {join_timeout}")
    addresses, worker = read_tf_config(os.environ["TF_CONFIG"])
    rendezvous(addresses, worker, join_timeout)
    strategy = _KerasMultiWorkerStrategy()
    local = strategy.num_replicas_in_sync // len(addresses)
    return Cluster(name, strategy, len(addresses), worker, local)


def read_tf_config(text: str) -> tuple[list[str], int]:
    """Every worker's ``host:port`` (the chief first, as tf.distribute numbers them) and this
    process's index among them, from ``TF_CONFIG``; a mistake is one line naming it."""
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"TF_CONFIG is not valid JSON ({error})") from None
    cluster, task = _field(config, "cluster", Mapping), _field(config, "task", Mapping)
    unknown = sorted(set(cluster) - set(_TASK_TYPES))
    if unknown:
        raise UserError(
            f"TF_CONFIG's cluster has {', '.join(unknown)} tasks; multi-worker training takes "
            "only 'chief' and 'worker' tasks"
        )
    jobs = {job: _addresses(cluster, job) for job in _TASK_TYPES if job in cluster}
    if len(jobs.get("chief", [])) > 1:
        raise UserError("TF_CONFIG's cluster names more than one chief; name at most one")
    addresses = [*jobs.get("chief", []), *jobs.get("worker", [])]
    if not addresses:
        raise UserError("TF_CONFIG's cluster names no worker: give cluster.worker a list")
    duplicates = sorted({a for a in addresses if addresses.count(a) > 1})
    if duplicates:
        raise UserError(f"TF_CONFIG's cluster lists {duplicates[0]} twice: give each task a port")
    kind, index = _field(task, "type", str), _field(task, "index", int)
    if kind not in jobs:
        raise UserError(
            f"TF_CONFIG's task type {kind!r} is not a job of its cluster ({', '.join(jobs)})"
        )
    if isinstance(index, bool) or not 0 <= index < len(jobs[kind]):
        raise UserError(
            f"TF_CONFIG's task index {index} is out of range: the cluster has "
            f"{len(jobs[kind])} {kind} task(s), indices 0..{len(jobs[kind]) - 1}"
        )
    return addresses, index + (len(jobs.get("chief", [])) if kind == "worker" else 0)


def _field(parent: Mapping, key: str, kind: type):
    if not isinstance(parent, Mapping) or not isinstance(parent.get(key), kind):
        what = {Mapping: "a JSON object", str: "a string", int: "an integer"}[kind]
        raise UserError(f"TF_CONFIG needs {key!r} as {what}, got {json.dumps(parent)[:80]}")
    return parent[key]


def _addresses(cluster: Mapping, job: str) -> list[str]:
    addresses = cluster[job]
    if not isinstance(addresses, list) or not all(_is_address(a) for a in addresses):
        raise UserError(
            f"TF_CONFIG's cluster.{job} must be a list of 'host:port' strings, got {addresses!r}"
        )
    return addresses


def _is_address(address: object) -> bool:
    if not isinstance(address, str) or ":" not in address:
        return False
    host, port = address.rsplit(":", 1)
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def rendezvous(addresses: list[str], worker: int, timeout: float) -> None:
    """Return once every worker has connected to this one and this one to every worker, or raise
    a ``UserError`` naming the workers still missing after ``timeout`` seconds.

    Each worker listens on its own port of ``TF_CONFIG`` (which tf.distribute's server takes over
    right after) and connects to every other. A worker returns once it has accepted a connection
    from every peer and made one to every peer: by then every peer has reached it, so a peer that
    returns later no longer needs this worker's listener, and none waits for a closed port.
    """
    deadline = time.monotonic() + timeout
    peers = {i: a for i, a in enumerate(addresses) if i != worker}
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(_listen(addresses[worker]))
        reached: set[int] = set()
        heard: set[int] = set()
        while reached != set(peers) or heard != set(peers):
            if time.monotonic() > deadline:
                missing = sorted(set(peers) - (reached & heard))
                named = ", ".join(f"worker {i} ({peers[i]})" for i in missing)
                raise UserError(
                    f"{named} did not join the cluster within {timeout:g} s: start every worker "
                    "of TF_CONFIG with the same command, check its address and that its port is "
                    "open (--join-timeout SECONDS waits longer)"
                )
            for i in sorted(set(peers) - reached):
                if _reach(peers[i], worker, stack):
                    reached.add(i)
            heard |= _hear(server, stack)


@contextlib.contextmanager
def _listen(address: str) -> Iterator[socket.socket]:
    port = int(address.rsplit(":", 1)[1])
    dual = socket.has_dualstack_ipv6()  # both IPv4 and IPv6 peers, where the host has both
    family = socket.AF_INET6 if dual else socket.AF_INET
    try:
        server = socket.create_server(("", port), family=family, dualstack_ipv6=dual)
    except OSError as error:
        raise UserError(
            f"cannot listen on {address}, this worker's address in TF_CONFIG "
            f"({error.strerror or error}): free the port or give the worker another"
        ) from None
    with server:
        server.setblocking(False)
        yield server


def _reach(address: str, worker: int, stack: contextlib.ExitStack) -> bool:
    """Connect to a peer and say who this is; the connection stays open until the rendezvous
    ends."""
    host, port = address.rsplit(":", 1)
    try:
        connection = socket.create_connection((host, int(port)), timeout=_POLL)
    except OSError:
        return False
    stack.enter_context(connection)
    connection.sendall(f"{worker}\n".encode())
    return True


def _hear(server: socket.socket, stack: contextlib.ExitStack) -> set[int]:
    """The workers whose connections are waiting, by the index each one sent."""
    heard = set()
    while select.select([server], [], [], _POLL)[0]:
        connection, _ = server.accept()
        stack.enter_context(connection)
        connection.settimeout(5.0)
        with contextlib.suppress(OSError, ValueError):
            heard.add(int(connection.makefile().readline()))
    return heard


class _KerasMultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """``MultiWorkerMirroredStrategy`` whose ``reduce`` takes what Keras 3's ``fit`` gives it.

    Keras reduces each step's logs (scalar loss and metrics) with ``reduce("MEAN", v, axis=0)``
    under this strategy (keras-team/keras#20585); a scalar has no axis 0, and MirroredStrategy's
    path (a mean over the replicas) is what Keras means, so a scalar is reduced over the replicas
    alone. Everything else is the strategy's own ``reduce``.
    """

    def reduce(self, reduce_op, value, axis):
        local = self.experimental_local_results(value)[0]
        if axis is not None and getattr(local, "shape", None) is not None and local.shape.rank == 0:
            axis = None
        return super().reduce(reduce_op, value, axis)


@contextlib.contextmanager
def fit_scope(model: keras.Model, cluster: Cluster) -> Iterator[None]:
    """Where ``model.fit`` runs: as it is on one machine; on several, inside the strategy's scope
    with the model's own record of the strategy cleared.

    A Keras model made under a strategy remembers it and, before fitting, all-reduces its first
    input batch to build itself symbolically (``_maybe_symbolic_build``), which
    MultiWorkerMirroredStrategy cannot do for a dict of uint8 images (keras-team/keras#20585).
    This package's models are built when made; with the record cleared Keras takes the strategy
    from the scope (``tf.distribute.get_strategy``) and builds the metrics when it first traces
    the step, as for a model made before ``strategy.scope()`` existed. A peer that dies
    mid-fit (its heartbeats stop: the others' collectives are aborted within seconds) is one line.
    """
    if not cluster.multi_worker:
        yield
        return
    model._distribute_strategy = None  # Keras' own attribute: see the docstring
    try:
        with cluster.strategy.scope():
            yield
    except _LOST_PEER as error:
        raise UserError(
            f"a worker of the cluster stopped during training ({type(error).__name__}); the run "
            "directory keeps the last finished epoch: start every worker again with the same "
            "command to resume"
        ) from None
