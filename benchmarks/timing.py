"""Side-by-side timing: configurations measured alternately, medians over repeats.

Timing one configuration after another lets the machine's state (turbo, other processes, caches)
drift between them; alternating them in every repeat and taking medians makes the ratios, which
are what the goals are stated in, robust to that.
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

Step = Callable[[], None]


def measure_alternating(
    configs: dict[str, tuple[Step, int]], *, steps: int, repeats: int, warmup: int = 2
) -> dict[str, float]:
    """Items per second of each config: ``{name: (step, items per step)}``; median of repeats."""
    for step, _ in configs.values():
        for _ in range(warmup):
            step()
    rates: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(repeats):
        for name, (step, items) in configs.items():
            start = time.perf_counter()
            for _ in range(steps):
                step()
            rates[name].append(items * steps / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in rates.items()}


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def machine() -> str:
    """The processor model (benchmarks report it: ratios differ between CPU kinds), the number
    of CPUs and the system."""
    import os

    from paper_repro.provenance import cpu_model

    model = cpu_model() or platform.machine()
    return f"{model}, {os.cpu_count()} CPUs, {platform.platform(terse=True)}"


def write_json(result: dict, path: str | None) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
