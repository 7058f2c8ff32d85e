"""The history record of one training run: schema, validation, atomic save and load.

Training writes a run's ``history.json`` after every epoch; Table III and Figure 5 are regenerated
from these files alone, later and possibly on a machine without TensorFlow. This module is the one
definition of the format, imports nothing heavy, and rejects a malformed file by naming the file and
the field, so that a table never shows a wrong number silently. Where histories live and how they
are written atomically is ``paper_repro.runs``'s.

The dataclasses below are the schema. One reader walks their fields and type hints; the few
constraints a type does not state (a range, a set of choices, a format) are declared on the field
with ``Annotated``, so a new field is one line here and is read, validated and written with the
rest.

A key this version does not know, anywhere in a history (its ``config`` included), is refused,
never dropped: it is a misspelt or hand-edited field, or a field (a setting) that a newer version
added. Either way this version cannot say what it did to the numbers, and dropping it would make
two runs that differ in it look the same to a resume, which would continue another run, and to a
table, which would average them. The refusal names the key and the file and, where a newer
version wrote the file, says so: that version reads it. Fields are only ever added, so an older
file stays readable, a field it lacks read at its default.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

from paper_repro import __version__, datasets
from paper_repro.arms import STARTS
from paper_repro.errors import UserError
from paper_repro.experiments import CROPS, MODES, RunConfig
from paper_repro.runs import write_atomic

SCHEMA = "paper_repro.history/1"
STATUSES = ("running", "finished", "diverged")  # diverged: stopped at a non-finite value
_INF = float("inf")
_TOO_DEEP = (
    "nested too deeply to be a history (no field of one nests more than a few levels): the file "
    "is damaged; restore it from a copy or move it out of the folder"
)


class HistoryError(UserError):
    """A history file that does not follow the schema; the message names the file and field."""


@dataclass(frozen=True)
class _Field:
    """Where a value sits in a history file, so every error names the file and the field path;
    ``newer`` is the version that wrote the file where it is newer than this one."""

    source: str
    path: str = ""
    newer: str | None = None

    def key(self, name: str) -> _Field:
        return dataclasses.replace(self, path=f"{self.path}.{name}" if self.path else name)

    def index(self, position: int) -> _Field:
        return dataclasses.replace(self, path=f"{self.path}[{position}]")

    def fail(self, problem: str) -> NoReturn:
        raise HistoryError(f"{self.source}: {self.path or 'the history'} {problem}")

    def unknown(self, what: str, fix: str = "") -> NoReturn:
        """Refuse a key (or a schema) this version does not know: where a newer version wrote
        the file, say so, since that version reads it; otherwise add ``fix``."""
        if self.newer:
            fix = (
                f"; paper_repro {self.newer} wrote this history, newer than this one"
                f" ({__version__}): read it with paper_repro {self.newer} or later"
            )
        self.fail(what + fix)


def _show(value: Any) -> str:
    """A value as it appears in JSON, shortened: error messages stay one readable line."""
    text = json.dumps(value, default=repr)
    return text if len(text) <= 60 else text[:57] + "..."


# The constraints a field declares with ``Annotated``. On a scalar, the annotation is its reader,
# in place of its type's: ``(value, where) -> value``, failing with a message that states the
# whole constraint. On an array or an object, it checks the whole before the items are read.


@dataclass(frozen=True)
class Number:
    """A JSON number that ``accept`` takes, read as a float (a boolean is no number here)."""

    expected: str
    accept: Callable[[float], bool] = lambda _: True

    def __call__(self, value: Any, where: _Field) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not self.accept(float(value))
        ):
            where.fail(f"must be {self.expected}, got {_show(value)}")
        return float(value)


@dataclass(frozen=True)
class OneOf:
    """One of a few values (bool is an int in Python: true must not pass for crops 1)."""

    choices: tuple[Any, ...]

    def __call__(self, value: Any, where: _Field) -> Any:
        if isinstance(value, bool) or value not in self.choices:
            shown = ", ".join(_show(choice) for choice in self.choices)
            where.fail(f"must be one of {shown}, got {_show(value)}")
        return value


@dataclass(frozen=True)
class Keys:
    """An object with exactly these keys, read in this order."""

    names: tuple[str, ...]

    def __call__(self, value: Mapping[str, Any], where: _Field) -> dict[str, Any]:
        value = _object(value, where, self.names)
        return {name: value[name] for name in self.names}


@dataclass(frozen=True)
class NotEmpty:
    """An array of at least one item; ``problem`` says what an empty one fails to do."""

    problem: str

    def __call__(self, value: list[Any], where: _Field) -> list[Any]:
        if not value:
            where.fail(f"{self.problem}, got []")
        return value


def _string(value: Any, where: _Field) -> str:
    if not isinstance(value, str) or not value:
        where.fail(f"must be a non-empty string, got {_show(value)}")
    return value


def _integer(value: Any, where: _Field) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        where.fail(f"must be an integer, got {_show(value)}")
    return value


def _boolean(value: Any, where: _Field) -> bool:
    if not isinstance(value, bool):
        where.fail(f"must be true or false, got {_show(value)}")
    return value


def _count(value: Any, where: _Field) -> int:
    if _integer(value, where) < 1:
        where.fail(f"must be at least 1, got {value}")
    return value


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


def _sha256(value: Any, where: _Field) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}", value):
        where.fail(f"must be 64 lowercase hex digits, got {_show(value)}")
    return value


# The readers of unannotated scalars, by type.
_READERS: dict[Any, Callable[[Any, _Field], Any]] = {
    str: _string,
    int: _integer,
    float: Number("a number"),
    bool: _boolean,
    Any: lambda value, where: value,
}

# The names the first histories gave three settings since renamed (``base_lr``, ``drop_epochs``,
# ``gamma``), with their types: still read, and kept as recorded, so that those files stay valid.
FORMER_SETTINGS = {"lr": float, "lr_drop_after_epoch": int, "lr_drop_factor": float}


@functools.cache
def _setting_types() -> dict[str, Any]:
    """Every setting a history's ``config`` may hold, with its type: ``RunConfig``'s fields and
    ``FORMER_SETTINGS``."""
    return {**typing.get_type_hints(RunConfig), **FORMER_SETTINGS}


def _settings(value: Mapping[str, Any], where: _Field) -> Mapping[str, Any]:
    """A run's recorded settings (``RunConfig.to_dict``), each a setting this version knows, of
    its type; kept as recorded (JSON arrays stay lists), the form a resume compares."""
    known = _setting_types()
    for name, setting in value.items():
        if name not in known:
            close = difflib.get_close_matches(str(name), list(known), n=3)
            where.key(str(name)).unknown(
                f"is not a setting paper_repro {__version__} knows"
                + (f" (did you mean {', '.join(close)}?)" if close else ""),
                "; a misspelt or hand-edited key: correct it, or restore the file from a copy",
            )
        _read(known[name], setting, where.key(name))
    return value


Fraction = Annotated[float, Number("a number in [0, 1]", lambda x: 0.0 <= x <= 1.0)]
Seconds = Annotated[float, Number("a finite number >= 0", lambda x: 0.0 <= x < _INF)]
Rate = Annotated[float, Number("a finite number > 0", lambda x: 0.0 < x < _INF)]
Count = Annotated[int, _count]
Timestamp = Annotated[str, _timestamp]
Sha256 = Annotated[str, _sha256]


@dataclass(frozen=True)
class EpochRecord:
    """One epoch: its learning rate, training metrics and center-crop test accuracy (Figure 5)."""

    epoch: int  # numbered 1..n (checked with the whole history)
    lr: Rate
    train_loss: float  # any number: a diverged run has a NaN or infinite loss, still worth keeping
    train_accuracy: Fraction
    test_accuracy: Fraction
    wall_seconds: Seconds


# A field with a default was added to its record after the first histories were written: a file
# may lack it, and it is left out of the file while it is None, so that older files stay valid.


@dataclass(frozen=True)
class FinalEvaluation:
    """The multi-crop test accuracy at the end of a run (Table III), and the centre crop's alone
    from the same pass (Caffe's TEST phase; absent from histories written before it was kept)."""

    crops: Annotated[int, OneOf(CROPS)]
    top1: Fraction
    top5: Fraction  # >= top1 (checked with the whole history), as center_top5 >= center_top1
    wall_seconds: Seconds
    center_top1: Fraction | None = None
    center_top5: Fraction | None = None


@dataclass(frozen=True)
class Weights:
    """The pretrained weights a run started from, identified by content and not only by path."""

    path: str
    sha256: Sha256


@dataclass(frozen=True)
class Provenance:
    """What produced the numbers: code, library versions, start weights, machine and start time."""

    package_version: str
    versions: dict[str, str]
    git_commit: str | None
    weights: Weights | None
    device: str
    host: str
    started: Timestamp


@dataclass(frozen=True)
class ResumeRecord:
    """A process that resumed the run after ``after_epoch`` epochs: what produced the epochs
    from there (code, libraries, machine, start time), since ``Provenance`` says only what
    started the run, and a run may be resumed by other code or on another machine."""

    after_epoch: int
    package_version: str
    versions: dict[str, str]
    git_commit: str | None
    device: str
    host: str
    started: Timestamp


@dataclass(frozen=True)
class CacheRecord:
    """The feature caches a ``--cache-features`` run trained from (directory names) and their
    build time, counted also when a run reuses them: it is part of that mode's time to accuracy."""

    train: str
    test: str
    build_seconds: Seconds
    reused: bool


@dataclass(frozen=True)
class DataRecord:
    """What the run's splits held when it started (``data.SplitInfo.content``): a tfds dataset's
    name, version and split, or a hash of an image folder's classes, paths and bytes. The images
    behind a folder's path can change; a run is resumed, or skipped as finished, only on the
    images it trained on."""

    train: str
    test: str


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
    workers: Count
    devices_per_worker: Count


# The kernels that can update a decayed weight, all with the same bits (``CaffeSGD.kernels``).
UPDATE_KERNELS = ("caffe", "tensorflow", "keras")


@dataclass(frozen=True)
class UpdateRecord:
    """Which kernel updated the run's decayed weights (``paper_repro.update_choice``), as the
    last process that trained it chose, and what choosing cost, in seconds summed over its
    processes: 0 where the choice was read from the machine's cache or forced."""

    kernel: Annotated[str, OneOf(UPDATE_KERNELS)]
    choice_seconds: Seconds


@dataclass(frozen=True)
class History:
    """A run's whole record. Training extends it with ``dataclasses.replace`` and saves it."""

    experiment: str
    preset: str
    dataset: str
    mode: Annotated[str, OneOf(MODES)]
    seed: int
    config: Annotated[dict[str, Any], _settings]
    provenance: Provenance
    epochs: tuple[EpochRecord, ...]
    final: FinalEvaluation | None  # set exactly when the run has finished
    status: Annotated[str, OneOf(STATUSES)]
    cache: CacheRecord | None = None
    start: Annotated[str, OneOf(STARTS)] | None = None  # None before it was recorded
    # The names of the classes the network outputs, in output order (the ``config``'s ``classes``
    # subset, relabelled), so that export and evaluate need no dataset to name them; None in
    # histories written before they were recorded. The dataset, its splits, the class subset and
    # the input geometry are the ``config``'s.
    class_names: Annotated[tuple[str, ...], NotEmpty("must name at least one class")] | None = None
    cluster: ClusterRecord | None = None  # None on one device (and before it was recorded)
    # Seconds per PHASES name; None before it was recorded.
    phases: Annotated[dict[str, Seconds], Keys(PHASES)] | None = None
    # Criterion C of figures/study/PLAN.md (``paper_repro.convergence``), recorded when the run
    # finished: whether its training loss had flattened before the first learning-rate drop.
    # None while running, before it was recorded, and where too few epochs precede the drop.
    converged: bool | None = None
    # The solver's update kernel; None before it was recorded (the package's own, where built).
    update: UpdateRecord | None = None
    # The images of its splits; None before it was recorded.
    data: DataRecord | None = None
    # Each process that resumed it, in order; None while no process has.
    resumes: tuple[ResumeRecord, ...] | None = None
    # What became non-finite, and where, set exactly when the status is "diverged": its epochs
    # are those before, the last good one's checkpoint kept.
    diverged: str | None = None

    @property
    def num_classes(self) -> int | None:
        """The classes the run's network outputs: recorded, else its class subset's, else those
        of a dataset the registry knows (histories written before the names were recorded)."""
        if self.class_names:
            return len(self.class_names)
        if self.config.get("classes"):
            return len(self.config["classes"])
        return datasets.describe(self.dataset).classes

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, keys in schema order so that saved files diff cleanly."""
        return {"schema": SCHEMA, **_json(self)}

    @classmethod
    def from_dict(cls, data: Any, source: str = "<history>") -> History:
        """Validate a decoded history; errors read ``SOURCE: FIELD.PATH must be ..., got ...``."""
        try:
            return _read_history(data, _Field(source))
        except RecursionError:
            raise HistoryError(f"{source}: {_TOO_DEEP}") from None


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
    except RecursionError:  # Python's decoder recurses once per nested array or object
        raise HistoryError(f"{source}: {_TOO_DEEP}") from None
    return History.from_dict(data, source=source)


def _json(value: Any) -> Any:
    """A record as JSON values: objects in field order, arrays for tuples, and a field added
    later left out while it is None."""
    if dataclasses.is_dataclass(value):
        return {
            name: _json(getattr(value, name))
            for name, _, added_later in _fields(type(value))
            if not (added_later and getattr(value, name) is None)
        }
    if isinstance(value, tuple | list):
        return [_json(item) for item in value]
    if isinstance(value, dict):
        return {key: _json(item) for key, item in value.items()}
    return value


@functools.cache
def _fields(record: type) -> tuple[tuple[str, Any, bool], ...]:
    """A record's fields: (name, type hint with its annotations, whether it was added later)."""
    hints = typing.get_type_hints(record, include_extras=True)
    return tuple(
        (field.name, hints[field.name], field.default is not dataclasses.MISSING)
        for field in dataclasses.fields(record)
    )


def _read_history(data: Any, where: _Field) -> History:
    data = _mapping(data, where)
    where = dataclasses.replace(where, newer=_newer_writer(data))
    if "schema" in data and data["schema"] != SCHEMA:
        where.key("schema").unknown(f"must be {_show(SCHEMA)}, got {_show(data['schema'])}")
    history = _read_record(History, data, where, header=("schema",))
    _check_together(history, where)
    return history


def _newer_writer(data: Mapping[str, Any]) -> str | None:
    """The package version that wrote a history, where it is newer than this one (its unknown
    keys are then fields added since, not mistakes); None otherwise or where unreadable."""
    provenance = data.get("provenance")
    written = provenance.get("package_version") if isinstance(provenance, Mapping) else None
    if not isinstance(written, str) or _release(written) <= _release(__version__):
        return None
    return written


def _release(version: str) -> tuple[int, ...]:
    """A version's leading release numbers: "0.2.1rc1" -> (0, 2, 1); () for none."""
    found = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(part) for part in found.group().split(".")) if found else ()


def _check_together(history: History, where: _Field) -> None:
    """What no single field says: a final evaluation exactly when the run has finished, what
    diverged exactly when it diverged, epochs numbered 1..n, and top-5 accuracies no lower than
    the top-1 ones."""
    for key, status in (("final", "finished"), ("diverged", "diverged")):
        value = getattr(history, key)
        if (value is None) == (history.status == status):
            where.key(key).fail(
                f'must be set exactly when status is "{status}", got {_show(_json(value))}'
            )
    for position, epoch in enumerate(history.epochs):
        if epoch.epoch != position + 1:
            where.key("epochs").index(position).key("epoch").fail(
                f"must be {position + 1} (epochs are numbered 1..n), got {epoch.epoch}"
            )
    final = history.final
    for top1, top5 in (("top1", "top5"), ("center_top1", "center_top5")):
        low, high = getattr(final, top1, None), getattr(final, top5, None)
        if low is not None and high is not None and high < low:
            where.key("final").key(top5).fail(f"must be >= {top1} ({low}), got {high}")


def _read_record(record: type, value: Any, where: _Field, header: tuple[str, ...] = ()) -> Any:
    """A dataclass from an object of its fields (and of ``header``'s keys, not kept)."""
    fields = _fields(record)
    value = _object(
        value,
        where,
        (*header, *(name for name, _, _ in fields)),
        optional=tuple(name for name, _, added_later in fields if added_later),
    )
    return record(
        **{name: _read(hint, value.get(name), where.key(name)) for name, hint, _ in fields}
    )


def _read(hint: Any, value: Any, where: _Field) -> Any:
    """``value`` as the type ``hint`` says, its ``Annotated`` constraints checked: a record from
    an object, a tuple from an array, a dict from an object, a scalar by its reader."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # ``X | None``
        (inner,) = (arg for arg in typing.get_args(hint) if arg is not type(None))
        return None if value is None else _read(inner, value, where)
    constraints = ()
    if typing.get_origin(hint) is Annotated:
        hint, *constraints = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _read_record(hint, value, where)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        items = _array(value, where)
        for check in constraints:
            items = check(items, where)
        return tuple(_read(args[0], item, where.index(i)) for i, item in enumerate(items))
    if origin is dict:
        entries = _mapping(value, where)
        for check in constraints:
            entries = check(entries, where)
        return {name: _read(args[1], item, where.key(name)) for name, item in entries.items()}
    (reader,) = constraints or (_READERS[hint],)
    return reader(value, where)


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
            where.key(str(key)).unknown(f"is not a field of {SCHEMA} (known: {', '.join(keys)})")
    return value


def _mapping(value: Any, where: _Field) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        where.fail(f"must be an object, got {_show(value)}")
    return value


def _array(value: Any, where: _Field) -> list[Any]:
    if not isinstance(value, list):
        where.fail(f"must be an array, got {_show(value)}")
    return value
