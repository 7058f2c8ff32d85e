"""Rule E's statistics (figures/study/PLAN.md): the 95 % Student-t interval of a mean over seeds."""

import math

import pytest

from paper_repro import seeds


@pytest.mark.parametrize(
    ("freedom", "quantile"),
    # The standard tables' two-sided 95 % values.
    [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (9, 2.262), (19, 2.093), (30, 2.042)],
)
def test_the_t_quantiles_are_the_tables(freedom, quantile):
    assert seeds.t_quantile(freedom) == pytest.approx(quantile, abs=5e-4)


def test_beyond_the_table_the_interval_is_the_last_rows_never_narrower():
    assert seeds.t_quantile(100) == seeds.t_quantile(30) > 1.96
    with pytest.raises(ValueError, match="at least 1 degree of freedom"):
        seeds.t_quantile(0)


def test_the_half_width_is_t_times_the_standard_error():
    """Against the exact quantiles: the table's 4 decimals are within 2e-5 of them."""
    summary = seeds.summarize([1.0, 2.0, 3.0, 4.0, 5.0])  # std sqrt(2.5), n 5, 4 degrees
    exact = 2.776445 * math.sqrt(2.5) / math.sqrt(5)
    assert seeds.half_width(summary) == pytest.approx(exact, rel=2e-5)
    three = seeds.summarize([0.05, -0.02, 0.03])  # a paired margin over three seeds
    assert seeds.half_width(three) == pytest.approx(4.302653 * three.std / math.sqrt(3), rel=2e-5)
    assert seeds.half_width(seeds.summarize([0.4])) is None  # one seed: no interval


def test_the_interval_reads_mean_plus_minus_half_width_and_n():
    points = lambda value: f"{100 * value:.2f}"  # noqa: E731
    assert seeds.interval_text(seeds.summarize([0.01, 0.03]), points) == "2.00 ± 12.71 (n=2)"
    assert seeds.interval_text(seeds.summarize([0.01]), points) == "1.00 (n=1)"
