"""The closed-form ridge probe against scikit-learn, and its class balancing."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from probes.ridge import RidgeAccumulator, fit_ridge
from probes.targets import inverse_frequency_weights


@pytest.mark.parametrize("weighted", [False, True])
def test_matches_sklearn_ridge_for_every_lambda(weighted):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 12)) * rng.uniform(0.1, 5, size=12) + rng.normal(size=12)
    y = x @ rng.normal(size=(12, 3)) + rng.normal(size=(500, 3)) + 2.0
    w = rng.uniform(0.1, 3, size=500) if weighted else None
    lambdas = [0.01, 1.0, 100.0]
    batches = [
        (x[i : i + 64], y[i : i + 64], None if w is None else w[i : i + 64]) for i in range(0, 500, 64)
    ]
    sol = fit_ridge(batches, 12, 3, lambdas, relative=False)
    for li, lam in enumerate(lambdas):
        ref = Ridge(alpha=lam).fit(x, y, sample_weight=w)
        np.testing.assert_allclose(sol.predict(x, li), ref.predict(x), atol=1e-4)
        np.testing.assert_allclose(sol.coef[li], ref.coef_.T, atol=1e-6)
    all_l = sol.predict(x[:5])
    assert all_l.shape == (5, 3, 3)
    np.testing.assert_allclose(all_l[:, 1], sol.predict(x[:5], 1))


def test_relative_lambda_is_scale_free():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 5))
    y = rng.normal(size=(200, 1))
    a = fit_ridge([(x, y, None)], 5, 1, [0.1])
    b = fit_ridge([(x * 1000, y, None)], 5, 1, [0.1])
    np.testing.assert_allclose(a.predict(x, 0), b.predict(x * 1000, 0), atol=1e-8)


def test_zero_weight_rows_are_dropped_and_merge_is_additive():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(50, 4)), rng.normal(size=(50, 2))
    w = np.r_[np.ones(30), np.zeros(20)]
    a = RidgeAccumulator(4, 2)
    a.add(x, y, w)
    b = RidgeAccumulator(4, 2)
    b.add(x[:15], y[:15])
    b.merge(RidgeAccumulator(4, 2)).add(x[15:30], y[15:30])
    assert a.count == b.count == 30
    np.testing.assert_allclose(a.xx, b.xx)
    np.testing.assert_allclose(a.solve([1.0])[0], b.solve([1.0])[0])


def test_inverse_frequency_weights():
    w = inverse_frequency_weights(np.array([90.0, 10.0, 0.0]))
    np.testing.assert_allclose(w, [100 / 180, 100 / 20, 0.0])
    assert (w[:2] * [90, 10]).sum() == pytest.approx(100)  # mean weight over pixels stays 1
