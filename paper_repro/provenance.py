"""Provenance: what produced a run's numbers, recorded in its history when it starts.

The package and library versions, the commit of the code the process imported (``+dirty`` with
local edits), the pretrained weights by sha256 (a path alone can be overwritten), the device and
the host. Kept apart from the trainer because none of it changes how a run trains.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import socket
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import tensorflow as tf

from paper_repro import __version__
from paper_repro.history import Provenance, ResumeRecord, Weights

VERSIONED = ("tensorflow", "tensorflow-cpu", "keras", "tensorflow-datasets", "numpy")


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def record(weights_path: Path | None) -> Provenance:
    """What produces a run: this package and its libraries, the code's commit, the weights it
    starts from (by content), the machine and the start time."""
    weights = None
    if weights_path is not None:
        weights = Weights(str(weights_path), sha256(weights_path))
    return Provenance(weights=weights, **_this_process())


def resume(after_epoch: int) -> ResumeRecord:
    """What resumes a run after ``after_epoch`` epochs: this process's code, machine and time."""
    return ResumeRecord(after_epoch=after_epoch, **_this_process())


def _this_process() -> dict:
    return {
        "package_version": __version__,
        "versions": versions(),
        "git_commit": git_commit(),
        "device": device(),
        "host": socket.gethostname(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


@functools.cache
def git_commit() -> str | None:
    """The commit of the code this process runs (read once, when its first run starts: a long
    ``reproduce`` keeps running the code it started with while the checkout moves on), ``+dirty``
    with local edits."""
    package = Path(__file__).parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=package, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{commit}+dirty" if dirty else commit or None


def device() -> str:
    """The accelerator, or the CPU with its model name where the system says it: the time
    tables tell runs of different machines apart by it (a host name such as "vm" may repeat)."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"{len(gpus)} x {details.get('device_name', 'GPU')}"
    model = cpu_model()
    machine = platform.processor() or platform.machine()
    return f"CPU ({os.cpu_count()} cores, {machine}{f', {model}' if model else ''})"


def cpu_model() -> str | None:
    """The CPU's model name from Linux's /proc/cpuinfo; None elsewhere."""
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names and names[0] else None
