"""Beta posterior maths against closed forms and hand-computed values (scipy is not installed here)."""

from __future__ import annotations

import math

import pytest

from tree.posterior import beta_cdf, beta_posterior, beta_ppf, expected_shortfall


def binomial_tail(n: int, k: int, x: float) -> float:
    """P(Binomial(n, x) >= k): equals I_x(k, n - k + 1) for integers, an independent reference."""
    return sum(math.comb(n, j) * x**j * (1 - x) ** (n - j) for j in range(k, n + 1))


@pytest.mark.parametrize("a, b, x", [(3, 9, 0.3), (11, 3, 0.8), (1, 1, 0.42), (40, 60, 0.37), (2, 200, 0.01)])
def test_cdf_equals_binomial_tail(a, b, x):
    assert beta_cdf(x, a, b) == pytest.approx(binomial_tail(a + b - 1, a, x), abs=1e-12)


@pytest.mark.parametrize(
    "a, b, q, expected",
    # Beta(3, 9) and Beta(11, 3) quantiles to 4 decimals (mpmath findroot on betainc, 30 digits).
    [(3, 9, 0.05, 0.0788), (3, 9, 0.5, 0.2358), (3, 9, 0.95, 0.4701), (11, 3, 0.05, 0.5899), (11, 3, 0.95, 0.9340)],
)
def test_quantiles_known_values(a, b, q, expected):
    assert beta_ppf(q, a, b) == pytest.approx(expected, abs=5e-5)


@pytest.mark.parametrize("a", [1, 2, 5.5])
@pytest.mark.parametrize("q", [0.05, 0.3, 0.95])
def test_quantile_closed_forms(a, q):
    assert beta_ppf(q, a, 1) == pytest.approx(q ** (1 / a), abs=1e-9)  # Beta(a, 1): F(x) = x^a
    assert beta_ppf(q, 1, a) == pytest.approx(1 - (1 - q) ** (1 / a), abs=1e-9)


def test_posterior_of_two_of_ten():
    post = beta_posterior(correct=2, n=10)  # Beta(3, 9)
    assert post.mean == pytest.approx(3 / 12)
    assert (post.lo, post.hi) == pytest.approx((0.0788200457, 0.4700867993), abs=1e-8)
    empty = beta_posterior(0, 0)
    assert (empty.mean, empty.lo, empty.hi) == pytest.approx((0.5, 0.05, 0.95))


def test_large_counts_converge():
    post = beta_posterior(correct=4000, n=5000)
    assert post.lo < 0.8 < post.hi and post.hi - post.lo < 0.02


def test_expected_shortfall():
    assert expected_shortfall(0.8, 0, 0) == pytest.approx(0.8**2 / 2)  # uniform: integral of (t - x) on [0, t]
    # Beta(3, 9) numerically: integrate (t - x) * pdf by the midpoint rule.
    t, a, b, steps = 0.6, 3, 9, 20000
    norm = math.gamma(a) * math.gamma(b) / math.gamma(a + b)
    num = sum((t - x) * x ** (a - 1) * (1 - x) ** (b - 1) for x in ((i + 0.5) * t / steps for i in range(steps))) * t / steps
    assert expected_shortfall(t, 2, 10) == pytest.approx(num / norm, rel=1e-6)
    assert expected_shortfall(0.8, 95, 100) < expected_shortfall(0.8, 60, 100) < expected_shortfall(0.8, 20, 100)


def test_bad_arguments():
    with pytest.raises(ValueError):
        beta_posterior(3, 2)
    with pytest.raises(ValueError):
        beta_posterior(1, 2, level=1.0)
    with pytest.raises(ValueError):
        beta_ppf(1.5, 2, 2)
    with pytest.raises(ValueError):
        beta_cdf(0.5, 0, 2)
