"""Do two sets of runs have the same numbers? The check that a speed change left training alone.

    python -m benchmarks.same_histories DIR_A DIR_B

Pairs the histories below the two folders by their relative paths and compares every number a
run produces (per epoch: learning rate, training loss and accuracy, test accuracy; at the end:
every multi-crop and centre-crop accuracy) for exact equality. Wall times, phases, provenance and
cache build times are left out: they are where a speed change is meant to differ. Prints one line
per pair and exits 1 when any number differs or a history is missing from one side.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from paper_repro.experiments import recorded_settings
from paper_repro.history import History, load_history
from paper_repro.runs import find_histories


def numbers(history: History) -> dict:
    """Everything a run computes, without its timings. Settings added since a history was
    written take their defaults, and final numbers it did not record yet (None) are left out."""
    epochs = [
        {k: v for k, v in dataclasses.asdict(e).items() if k != "wall_seconds"}
        for e in history.epochs
    ]
    final = dataclasses.asdict(history.final) if history.final else {}
    final.pop("wall_seconds", None)
    settings = recorded_settings(history.config, history.dataset, history.mode)
    return {"config": settings, "seed": history.seed, "epochs": epochs, "final": final}


def _changed(one: dict, two: dict) -> list[str]:
    """The keys whose numbers differ; a final number one side did not record is not compared."""
    finals = [one["final"], two["final"]]
    for key in set(finals[0]) | set(finals[1]):
        if any(final.get(key) is None for final in finals):
            for final in finals:
                final.pop(key, None)
    return [key for key in one if one[key] != two[key]]


def differences(a: Path, b: Path) -> list[str]:
    """One line per history of either folder: ``same``, what differs, or which side lacks it."""
    found = {
        side: {p.relative_to(root).as_posix(): p for p in find_histories(root)}
        for side, root in (("a", a), ("b", b))
    }
    lines = []
    for name in sorted(found["a"].keys() | found["b"].keys()):
        if name not in found["a"] or name not in found["b"]:
            lines.append(f"{name}: only in {a if name in found['a'] else b}")
            continue
        one, two = (numbers(load_history(found[side][name])) for side in ("a", "b"))
        changed = _changed(one, two)
        lines.append(f"{name}: " + (f"differs in {', '.join(changed)}" if changed else "same"))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.same_histories")
    parser.add_argument("a", type=Path, help="a folder of histories")
    parser.add_argument("b", type=Path, help="another folder of histories")
    args = parser.parse_args(argv)
    lines = differences(args.a, args.b)
    print("\n".join(lines) if lines else "no histories found")
    return 0 if lines and all(line.endswith(": same") for line in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
