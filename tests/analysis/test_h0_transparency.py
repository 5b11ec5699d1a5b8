"""H0's transparency claim (B within ±5 % of A at the shared stable steps) is a three-outcome comparison
with its interval, on hand-made requests whose answer is known."""

import numpy as np

from kvharness.analysis.h0 import _transparency


def steps(scale, n=2000, seed=0):
    rng = np.random.default_rng(seed)
    return [{"concurrency": c, "ttft_ms_p50": 10.0 * scale, "_ttft_ms": list(rng.lognormal(np.log(10 * scale), 0.2, n))}
            for c in (1, 2)]


STABLE = {"stable": {1: True, 2: True}}


def test_the_same_service_is_equivalent_and_a_20_percent_slower_one_is_not_transparent():
    same = _transparency(steps(1.0, seed=1), steps(1.0, seed=2), STABLE, STABLE)
    assert same["transparent"] is True and "(equivalent)" in same["transparency"]
    slower = _transparency(steps(1.2, seed=1), steps(1.0, seed=2), STABLE, STABLE)
    # known truth: every B request is A's distribution x 1.2, so the p50 ratio is 1.2
    assert slower["transparent"] is False and "(differs)" in slower["transparency"]
    lo, hi = (float(x) for x in slower["transparency"].split("[")[1].split("]")[0].split(", "))
    assert lo < 1.2 < hi and lo > 1.05


def test_too_few_requests_leave_it_undecided():
    few = _transparency(steps(1.03, n=40, seed=1), steps(1.0, n=40, seed=2), STABLE, STABLE)
    assert few["transparent"] is None and "[" in few["transparency"]
