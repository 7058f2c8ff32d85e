"""The history record of one training run: schema, validation, atomic save and load.

Training writes a run's ``history.json`` after every epoch; Table III and Figure 5 are regenerated
from these files alone, later and possibly on a machine without TensorFlow. This module is the one
definition of the format, imports nothing heavy, and rejects a malformed file by naming the file and
the field, so that a table never shows a wrong number silently. Where histories live and how they
are written atomically is ``paper_repro.runs``'s.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from paper_repro.errors import UserError
from paper_repro.experiments import CROPS, MODES
from paper_repro.runs import write_atomic

SCHEMA = "paper_repro.history/1"
STATUSES = ("running", "finished")
# What a run's network started from: the paper's fresh initialisation; a pretrained network's
# features (frozen) with fc6/fc7 kept or new and fc8 new; a whole pretrained network; or, the
# control, a fresh untrained network whose features are frozen (``features=random``).
STARTS = ("scratch", "pretrained-features", "pretrained-network", "random-features")
_INF = float("inf")


class HistoryError(UserError):
    """A history file that does not follow the schema; the message names the file and field."""


@dataclass(frozen=True)
class EpochRecord:
    """One epoch: its learning rate, training metrics and center-crop test accuracy (Figure 5)."""

    epoch: int
    lr: float
    train_loss: float
    train_accuracy: float
    test_accuracy: float
    wall_seconds: float


# Fields of the history, and of its final evaluation, added after the first histories were written.
_OPTIONAL = ("cache", "start", "class_names", "cluster", "phases")
_OPTIONAL_FINAL = ("center_top1", "center_top5")


@dataclass(frozen=True)
class FinalEvaluation:
    """The multi-crop test accuracy at the end of a run (Table III), and the centre crop's alone
    from the same pass (Caffe's TEST phase; absent from histories written before it was kept)."""

    crops: int
    top1: float
    top5: float
    wall_seconds: float
    center_top1: float | None = None
    center_top5: float | None = None


@dataclass(frozen=True)
class Weights:
    """The pretrained weights a run started from, identified by content and not only by path."""

    path: str
    sha256: str


@dataclass(frozen=True)
class Provenance:
    """What produced the numbers: code, library versions, start weights, machine and start time."""

    package_version: str
    versions: dict[str, str]
    git_commit: str | None
    weights: Weights | None
    device: str
    host: str
    started: str


@dataclass(frozen=True)
class CacheRecord:
    """The feature caches a ``--cache-features`` run trained from (directory names) and their
    build time, counted also when a run reuses them: it is part of that mode's time to accuracy."""

    train: str
    test: str
    build_seconds: float
    reused: bool


# Where a run's wall time went besides its training steps (``EpochRecord.wall_seconds``) and its
# final evaluation (``FinalEvaluation.wall_seconds``), in seconds summed over the processes that
# worked on it: ``data`` (datasets, subsets, pipelines), ``model`` (the network built, or the
# checkpoint read), ``cache`` (the feature cache built or opened), ``epoch_tests`` (the
# centre-crop test after every epoch), ``checkpoints`` (history and checkpoint written after every
# epoch), ``final_save`` (the model written) and ``total`` (the whole run, from the call to its
# end: the rest of it is start-up, reading the source model and Keras' own work around the steps).
PHASES = ("data", "model", "cache", "epoch_tests", "checkpoints", "final_save", "total")


@dataclass(frozen=True)
class ClusterRecord:
    """Where a distributed run trained (``--strategy mirrored`` or ``multi-worker``): its
    replicas are ``workers * devices_per_worker``, each taking an equal part of every batch."""

    strategy: str
    workers: int
    devices_per_worker: int


# The classes of the paper's datasets, for histories that do not record theirs.
KNOWN_CLASSES = {"mnist": 10, "cifar10": 10, "cifar100": 100, "imagenet2012": 1000}


@dataclass(frozen=True)
class History:
    """A run's whole record. Training extends it with ``dataclasses.replace`` and saves it."""

    experiment: str
    preset: str
    dataset: str
    mode: str
    seed: int
    config: dict[str, Any]
    provenance: Provenance
    epochs: tuple[EpochRecord, ...]
    final: FinalEvaluation | None
    status: str
    cache: CacheRecord | None = None
    start: str | None = None  # one of STARTS; None in histories written before it was recorded
    # The names of the classes the network outputs, in output order (the ``config``'s ``classes``
    # subset, relabelled), so that export and evaluate need no dataset to name them; None in
    # histories written before they were recorded. The dataset, its splits, the class subset and
    # the input geometry are the ``config``'s.
    class_names: tuple[str, ...] | None = None
    cluster: ClusterRecord | None = None  # None on one device (and before it was recorded)
    phases: dict[str, float] | None = None  # seconds per PHASES name; None before it was recorded

    @property
    def num_classes(self) -> int | None:
        """The classes the run's network outputs: recorded, else its class subset's, else those
        of a dataset of the paper's (histories written before the names were recorded)."""
        if self.class_names:
            return len(self.class_names)
        if self.config.get("classes"):
            return len(self.config["classes"])
        return KNOWN_CLASSES.get(self.dataset)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, keys in schema order so that saved files diff cleanly."""
        data = asdict(self)
        data["epochs"] = list(data["epochs"])
        if data["class_names"] is not None:
            data["class_names"] = list(data["class_names"])
        for optional in _OPTIONAL:  # absent rather than null: older files stay valid
            if data[optional] is None:
                del data[optional]
        for optional in _OPTIONAL_FINAL:
            if data["final"] is not None and data["final"][optional] is None:
                del data["final"][optional]
        return {"schema": SCHEMA, **data}

    @classmethod
    def from_dict(cls, data: Any, source: str = "<history>") -> History:
        """Validate a decoded history; errors read ``SOURCE: FIELD.PATH must be ..., got ...``."""
        return _read_history(data, _Field(source))


def save_history(history: History, path: str | os.PathLike[str]) -> None:
    """Validate and write atomically, so a crash mid-write never leaves a half-written history.

    Validating before writing keeps the writer to exactly what ``load_history`` accepts.
    """
    data = history.to_dict()
    History.from_dict(data, source=os.fspath(path))
    write_atomic(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))


def load_history(path: str | os.PathLike[str]) -> History:
    """Read and validate one history file."""
    source = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HistoryError(f"{source}: no such history file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise HistoryError(f"{source}: cannot read the history file ({error})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise HistoryError(f"{source}: not valid JSON ({error})") from None
    return History.from_dict(data, source=source)


@dataclass(frozen=True)
class _Field:
    """Where a value sits in a history file, so every error names the file and the field path."""

    source: str
    path: str = ""

    def key(self, name: str) -> _Field:
        return _Field(self.source, f"{self.path}.{name}" if self.path else name)

    def index(self, position: int) -> _Field:
        return _Field(self.source, f"{self.path}[{position}]")

    def fail(self, problem: str) -> NoReturn:
        raise HistoryError(f"{self.source}: {self.path or 'the history'} {problem}")


def _show(value: Any) -> str:
    """A value as it appears in JSON, shortened: error messages stay one readable line."""
    text = json.dumps(value, default=repr)
    return text if len(text) <= 60 else text[:57] + "..."


def _object(
    value: Any, where: _Field, keys: tuple[str, ...], optional: tuple[str, ...] = ()
) -> Mapping[str, Any]:
    """A JSON object with exactly these keys (``optional`` ones may be missing: fields added
    to the schema later): an unknown key is usually a misspelt known one."""
    value = _mapping(value, where)
    for key in keys:
        if key not in value and key not in optional:
            where.key(key).fail("is missing")
    for key in value:
        if key not in keys:
            where.key(str(key)).fail(f"is not a field of {SCHEMA} (known: {', '.join(keys)})")
    return value


def _mapping(value: Any, where: _Field) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        where.fail(f"must be an object, got {_show(value)}")
    return value


def _array(value: Any, where: _Field) -> list[Any]:
    if not isinstance(value, list):
        where.fail(f"must be an array, got {_show(value)}")
    return value


def _string(value: Any, where: _Field) -> str:
    if not isinstance(value, str) or not value:
        where.fail(f"must be a non-empty string, got {_show(value)}")
    return value


def _optional_string(value: Any, where: _Field) -> str | None:
    return None if value is None else _string(value, where)


def _choice(value: Any, where: _Field, choices: tuple[Any, ...]) -> Any:
    # bool is an int in Python; True must not pass for crops 1.
    if isinstance(value, bool) or value not in choices:
        where.fail(f"must be one of {', '.join(_show(c) for c in choices)}, got {_show(value)}")
    return value


def _integer(value: Any, where: _Field) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        where.fail(f"must be an integer, got {_show(value)}")
    return value


def _number(value: Any, where: _Field, expected: str, accept: Callable[[float], bool]) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not accept(float(value)):
        where.fail(f"must be {expected}, got {_show(value)}")
    return float(value)


def _fraction(value: Any, where: _Field) -> float:
    return _number(value, where, "a number in [0, 1]", lambda x: 0.0 <= x <= 1.0)


def _seconds(value: Any, where: _Field) -> float:
    return _number(value, where, "a finite number >= 0", lambda x: 0.0 <= x < _INF)


def _read_history(data: Any, where: _Field) -> History:
    data = _object(data, where, ("schema", *History.__dataclass_fields__), optional=_OPTIONAL)
    if data["schema"] != SCHEMA:
        where.key("schema").fail(f"must be {_show(SCHEMA)}, got {_show(data['schema'])}")
    status = _choice(data["status"], where.key("status"), STATUSES)
    final = data["final"]
    if (final is None) != (status == "running"):
        where.key("final").fail(
            f'must be set exactly when status is "finished", got {_show(final)}'
        )
    epochs = where.key("epochs")
    return History(
        experiment=_string(data["experiment"], where.key("experiment")),
        preset=_string(data["preset"], where.key("preset")),
        dataset=_string(data["dataset"], where.key("dataset")),
        mode=_choice(data["mode"], where.key("mode"), MODES),
        seed=_integer(data["seed"], where.key("seed")),
        config=dict(_mapping(data["config"], where.key("config"))),
        provenance=_read_provenance(data["provenance"], where.key("provenance")),
        epochs=tuple(
            _read_epoch(e, epochs.index(i), i + 1)
            for i, e in enumerate(_array(data["epochs"], epochs))
        ),
        final=None if final is None else _read_final(final, where.key("final")),
        status=status,
        cache=_read_cache(data.get("cache"), where.key("cache")),
        start=None
        if data.get("start") is None
        else _choice(data["start"], where.key("start"), STARTS),
        class_names=_read_class_names(data.get("class_names"), where.key("class_names")),
        cluster=_read_cluster(data.get("cluster"), where.key("cluster")),
        phases=_read_phases(data.get("phases"), where.key("phases")),
    )


def _read_phases(data: Any, where: _Field) -> dict[str, float] | None:
    if data is None:
        return None
    data = _object(data, where, PHASES)
    return {name: _seconds(data[name], where.key(name)) for name in PHASES}


def _read_class_names(data: Any, where: _Field) -> tuple[str, ...] | None:
    if data is None:
        return None
    names = _array(data, where)
    if not names:
        where.fail("must name at least one class, got []")
    return tuple(_string(name, where.index(i)) for i, name in enumerate(names))


def _read_cluster(data: Any, where: _Field) -> ClusterRecord | None:
    if data is None:
        return None
    data = _object(data, where, tuple(ClusterRecord.__dataclass_fields__))
    return ClusterRecord(
        strategy=_string(data["strategy"], where.key("strategy")),
        workers=_count(data["workers"], where.key("workers")),
        devices_per_worker=_count(data["devices_per_worker"], where.key("devices_per_worker")),
    )


def _count(value: Any, where: _Field) -> int:
    if _integer(value, where) < 1:
        where.fail(f"must be at least 1, got {value}")
    return value


def _read_cache(data: Any, where: _Field) -> CacheRecord | None:
    if data is None:
        return None
    data = _object(data, where, tuple(CacheRecord.__dataclass_fields__))
    if not isinstance(data["reused"], bool):
        where.key("reused").fail(f"must be true or false, got {_show(data['reused'])}")
    return CacheRecord(
        train=_string(data["train"], where.key("train")),
        test=_string(data["test"], where.key("test")),
        build_seconds=_seconds(data["build_seconds"], where.key("build_seconds")),
        reused=data["reused"],
    )


def _read_epoch(data: Any, where: _Field, number: int) -> EpochRecord:
    data = _object(data, where, tuple(EpochRecord.__dataclass_fields__))
    if _integer(data["epoch"], where.key("epoch")) != number:
        where.key("epoch").fail(f"must be {number} (epochs are numbered 1..n), got {data['epoch']}")
    return EpochRecord(
        epoch=number,
        lr=_number(data["lr"], where.key("lr"), "a finite number > 0", lambda x: 0 < x < _INF),
        # A diverged run has a NaN or infinite loss and is still a run worth recording.
        train_loss=_number(data["train_loss"], where.key("train_loss"), "a number", lambda x: True),
        train_accuracy=_fraction(data["train_accuracy"], where.key("train_accuracy")),
        test_accuracy=_fraction(data["test_accuracy"], where.key("test_accuracy")),
        wall_seconds=_seconds(data["wall_seconds"], where.key("wall_seconds")),
    )


def _read_final(data: Any, where: _Field) -> FinalEvaluation:
    fields = tuple(FinalEvaluation.__dataclass_fields__)
    data = _object(data, where, fields, optional=_OPTIONAL_FINAL)
    center = {
        key: None if data.get(key) is None else _fraction(data[key], where.key(key))
        for key in _OPTIONAL_FINAL
    }
    final = FinalEvaluation(
        crops=_choice(data["crops"], where.key("crops"), CROPS),
        top1=_fraction(data["top1"], where.key("top1")),
        top5=_fraction(data["top5"], where.key("top5")),
        wall_seconds=_seconds(data["wall_seconds"], where.key("wall_seconds")),
        **center,
    )
    for top1, top5 in (("top1", "top5"), ("center_top1", "center_top5")):
        low, high = getattr(final, top1), getattr(final, top5)
        if low is not None and high is not None and high < low:
            where.key(top5).fail(f"must be >= {top1} ({low}), got {high}")
    return final


def _read_provenance(data: Any, where: _Field) -> Provenance:
    data = _object(data, where, tuple(Provenance.__dataclass_fields__))
    versions = where.key("versions")
    weights = data["weights"]
    return Provenance(
        package_version=_string(data["package_version"], where.key("package_version")),
        versions={
            name: _string(v, versions.key(name))
            for name, v in _mapping(data["versions"], versions).items()
        },
        git_commit=_optional_string(data["git_commit"], where.key("git_commit")),
        weights=None if weights is None else _read_weights(weights, where.key("weights")),
        device=_string(data["device"], where.key("device")),
        host=_string(data["host"], where.key("host")),
        started=_timestamp(data["started"], where.key("started")),
    )


def _read_weights(data: Any, where: _Field) -> Weights:
    data = _object(data, where, tuple(Weights.__dataclass_fields__))
    sha256 = data["sha256"]
    if not isinstance(sha256, str) or not re.fullmatch(r"[0-9a-f]{64}", sha256):
        where.key("sha256").fail(f"must be 64 lowercase hex digits, got {_show(sha256)}")
    return Weights(path=_string(data["path"], where.key("path")), sha256=sha256)


def _timestamp(value: Any, where: _Field) -> str:
    text = _string(value, where)
    try:
        # Python 3.10's fromisoformat does not accept the "Z" suffix; it means +00:00.
        datetime.fromisoformat(text.removesuffix("Z") + ("+00:00" if text.endswith("Z") else ""))
    except ValueError:
        where.fail(
            f'must be an ISO-8601 time such as "2015-06-01T12:00:00+00:00", got {_show(text)}'
        )
    return text
