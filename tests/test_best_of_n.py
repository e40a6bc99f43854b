"""Best-of-n: the unbiased estimator against brute-force enumeration, and the analytic KL."""

import itertools
import math

import numpy as np
import pytest

from align.evaluate import best_of_n as bon


@pytest.mark.parametrize("k", [1, 4, 7])
def test_unbiased_estimator_equals_enumerating_every_subset(k):
    rng = np.random.default_rng(k)
    proxy = rng.normal(size=(3, k))  # distinct values: no ties
    gold = rng.normal(size=(3, k))
    for n in range(1, k + 1):
        got = bon.best_of_n_values(proxy, gold, n)
        want = [np.mean([gold[b, max(s, key=lambda i: proxy[b, i])]
                         for s in itertools.combinations(range(k), n)]) for b in range(3)]
        np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(bon.best_of_n_weights(k, 1), np.full(k, 1 / k))
    assert bon.best_of_n_weights(k, k)[-1] == pytest.approx(1.0)


def test_weights_sum_to_one_for_large_k_and_bad_n_is_an_error():
    for n in (1, 5, 100, 1000):
        assert bon.best_of_n_weights(1000, n).sum() == pytest.approx(1.0, rel=1e-9)
    with pytest.raises(ValueError, match="1 <= n <= k"):
        bon.best_of_n_weights(4, 5)
    with pytest.raises(ValueError, match="one shape"):
        bon.best_of_n_values(np.zeros((2, 3)), np.zeros((2, 4)), 1)


def test_table_reports_the_analytic_kl_and_rising_proxy_reward():
    rng = np.random.default_rng(0)
    proxy = rng.normal(size=(50, 16))
    gold = proxy + rng.normal(size=(50, 16))
    rows = bon.table(proxy, gold, [1, 2, 4, 16])
    assert [r["kl"] for r in rows] == [math.log(n) - (n - 1) / n for n in (1, 2, 4, 16)]
    assert rows[0]["kl"] == 0.0
    proxies = [r["proxy"] for r in rows]
    assert proxies == sorted(proxies) and proxies[-1] > proxies[0] + 1.0
    assert rows[-1]["gold"] > rows[0]["gold"]
    text = bon.markdown(rows)
    assert "| 16 | 1.835 |" in text and text.count("\n") == 5
