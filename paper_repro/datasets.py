"""Every fact about a dataset that the package knows, declared once.

The experiments (which datasets, their mirror and test-crop rules, the study's validation split),
the history (classes of runs that did not record them), the tables (display names, the paper's
numbers) and the figures (colours, titles) all read this registry. Adding a dataset is one entry
here plus its data; a dataset that is not here (an image folder, another tfds name) still works
everywhere, with the defaults ``describe`` gives.

This module imports nothing from TensorFlow: the results layer reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

# Figure 5's colours for datasets without their own, in order of first appearance.
FURTHER_COLOURS = ("tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


@dataclass(frozen=True)
class Reference:
    """A publication the paper's Table III cites for a state-of-the-art value, named so that a
    reader of the reproduced table need not look up the paper's reference list."""

    number: str  # the paper's own reference number, "[22]"
    authors: str
    year: int
    title: str
    venue: str

    @property
    def short(self) -> str:
        """For a table cell: ``Wan et al. 2013 [22]``."""
        return f"{self.authors} {self.year} {self.number}"

    @property
    def full(self) -> str:
        """For a table's notes: number, authors, title, venue and year."""
        return f"{self.number} {self.authors}, {self.title}, {self.venue} {self.year}"


# The paper's [22] and [23]. Its text (shared/paper/paper.txt) lacks the reference list; these are
# the publications whose results Table III quotes: DropConnect's 0.21 % MNIST error (99.79) and
# the deeply-supervised nets' 8.22 % CIFAR-10 and 34.57 % CIFAR-100 errors (91.78, 65.43).
DROPCONNECT = Reference(
    "[22]", "Wan et al.", 2013, "Regularization of neural networks using DropConnect", "ICML"
)
DSN = Reference("[23]", "Lee et al.", 2015, "Deeply-supervised nets", "AISTATS")


@dataclass(frozen=True)
class PaperRow:
    """One dataset's row of the paper's Table III, with what its text says about convergence."""

    full: float
    retrain: float
    state_of_the_art: float
    citation: Reference
    epochs_to_match: int | None  # "about N epochs" (Section IV); None where the paper is silent


@dataclass(frozen=True)
class Dataset:
    """A dataset as the paper and this package use it.

    ``validation_from``: the study's validation split, ``train[:N]`` training and ``train[N:]``
    validating (None where the study does not use the dataset). ``mirror`` and ``test_crops``:
    the paper's rule (no mirroring for digits, whose mirror images are not digits; 5 test views
    without the mirrors for them, 10 otherwise).
    """

    name: str
    display: str
    classes: int | None = None
    colour: str | None = None
    paper: PaperRow | None = None
    validation_from: int | None = None
    mirror: bool = True
    test_crops: int = 10
    target: bool = False  # one of the paper's transfer targets (Table III's rows)


REGISTRY: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset("mnist", "MNIST", 10, "red", PaperRow(99.68, 99.54, 99.79, DROPCONNECT, None),
                validation_from=50_000, mirror=False, test_crops=5, target=True),
        Dataset("cifar10", "CIFAR-10", 10, "blue", PaperRow(89.99, 89.14, 91.78, DSN, 8),
                validation_from=45_000, target=True),
        Dataset("cifar100", "CIFAR-100", 100, "green", PaperRow(63.65, 67.68, 65.43, DSN, 10),
                target=True),
        Dataset("imagenet2012", "ILSVRC-12", 1000),
    )
}  # fmt: skip

# The paper's transfer targets, in Table III's order.
PAPER_TARGETS = tuple(name for name, d in REGISTRY.items() if d.target)


def describe(name: str) -> Dataset:
    """The registry's entry for ``name``, or a plain one for a dataset it does not know (an image
    folder or another tfds dataset): named by itself, classes unknown, mirrored, 10 test views."""
    return REGISTRY.get(name) or Dataset(name, name)


def display(name: str) -> str:
    return describe(name).display


def paper_row(name: str) -> PaperRow | None:
    return describe(name).paper


def order(name: str) -> tuple[int, str]:
    """Sort key: the paper's targets in Table III's order, then the rest by name."""
    position = PAPER_TARGETS.index(name) if name in PAPER_TARGETS else len(PAPER_TARGETS)
    return position, name


def colours(names: list[str] | tuple[str, ...]) -> dict[str, str]:
    """A colour per dataset: its own, else the next of ``FURTHER_COLOURS`` in the order given."""
    others = [n for n in names if describe(n).colour is None]
    further = {n: FURTHER_COLOURS[i % len(FURTHER_COLOURS)] for i, n in enumerate(others)}
    return {n: describe(n).colour or further[n] for n in names}
