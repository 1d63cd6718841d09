"""The calibration suite of the unbiasedness test: truly unbiased estimators are rejected at most 9% of the time
on random networks with weight scales 1 to 3 at n = 200, 1,000 and 5,000 draws, heavy tails included, while
straight-through on the toy is still rejected.

Slow (about two minutes on two cores): ``make test-slow`` runs it, and CI does. The unit sampled is one Monte
Carlo run of ``n`` draws; each rate pools 12 networks x 15 seeded runs = 180 runs. Under a true level of 0.05 a
count of 17 or more (rate above 0.09) has probability about 0.5 %; Holm's rate is at most alpha and the rejections
that rest on heavy tails are "inconclusive", so the measured rates sit near 0.02. The seeds are fixed, so the
outcome is too.
"""

import pytest
import torch

import gradstats as gs
from gradstats.enumeration import DEFAULT_MAX_STATES
from gradstats.stats import unbiasedness_test

pytestmark = pytest.mark.slow

UNBIASED = ("reinforce", "reinforce_loo", "arm", "disarm", "local_expectation")
SIZES = (200, 1000, 5000)
NETWORKS = 12
RUNS = 15


def _exact(problem, name):
    """What ``exact="auto"`` finds, computed once per network (the same Moments the test would compute)."""
    est = gs.estimators.get(name)
    return gs.exact_moments(problem, name) if est.exact_possible(problem, {}, DEFAULT_MAX_STATES) else False


@pytest.mark.parametrize("weight_scale", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("estimator", UNBIASED)
def test_unbiased_estimators_are_rejected_at_most_nine_percent_of_the_time(estimator, weight_scale):
    counts = {n: {"rejected": 0, "not rejected": 0, "inconclusive": 0} for n in SIZES}
    for network in range(NETWORKS):
        problem = gs.problems.sbn([4, 3, 3], seed=network, weight_scale=weight_scale)
        g = gs.exact_gradient(problem)
        exact = _exact(problem, estimator)
        for n in SIZES:
            for run in range(RUNS):
                m = gs.moments(problem, estimator, method="mc", num_samples=n, seed=run, device="cpu", progress=False)
                counts[n][unbiasedness_test(m, g, exact=exact).verdict] += 1
    for n, c in counts.items():
        assert c["rejected"] / sum(c.values()) <= 0.09, (n, c)


@pytest.mark.parametrize("n", SIZES)
def test_straight_through_on_the_toy_is_still_rejected(n):
    # ST on the toy (t = 0.45, a = -1): bias -0.38, sd 0.89, so z = 0.43 sqrt(n) is 6 at n = 200: a run fails to
    # reject with probability below 1e-6 (exact standard errors) or about that (the draws' own)
    problem = gs.problems.toy(0.45, -1.0)
    g = gs.exact_gradient(problem)
    for exact in ("auto", False):
        verdicts = [unbiasedness_test(gs.moments(problem, "st", method="mc", num_samples=n, seed=run, device="cpu",
                                                 progress=False), g, exact=exact).verdict for run in range(50)]
        assert verdicts.count("rejected") == 50, (exact, verdicts)


AUDIT_SEEDS = 200


def correct_categorical_peer():
    """gradstats' own REINFORCE without a baseline, f(x) (e_x - p) for x ~ p, posing as a peer on the audit's unit
    of 4 classes (the law of the plain REINFORCE rows), drawn in the audit's chunks and seeds."""
    import torch.nn.functional as F

    from gradstats import audit

    costs = torch.tensor([1.0, -0.5, 0.3, 2.0], dtype=torch.float64)        # the unit's loss, per class
    probs = torch.softmax(torch.tensor([0.5, -0.3, 1.0, 0.0], dtype=torch.float64), 0)

    def draws(estimator, problem, num_draws, seed=0, chunk_size=50_000):
        for i, lo in enumerate(range(0, num_draws, chunk_size)):
            gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
            x = torch.multinomial(probs, min(chunk_size, num_draws - lo), replacement=True, generator=gen)
            yield costs[x, None] * (F.one_hot(x, 4).double() - probs)

    peer = audit.PeerEstimator("storchastic", "REINFORCE (gradstats' own, correct)", "exact", lambda shape: None,
                               units="categorical")
    problem = audit.audit_problems(units="categorical")[0]
    exact = gs.exact_gradient(problem)
    assert torch.allclose(exact, (costs[:, None] * (torch.eye(4, dtype=torch.float64) - probs) * probs[:, None])
                          .sum(0), rtol=1e-12, atol=0)
    return peer, problem, draws


def test_the_audit_rarely_accuses_a_correct_peer(monkeypatch):
    """The audit's sequential test (Holm over coordinates, Bonferroni over its three looks, familywise level
    gs.audit.ALPHA = 0.01) run on a correct REINFORCE posing as a peer, on the audit's unit of 4 classes (the law of
    the plain REINFORCE rows): the unit sampled is one audit (about 1.3 million draws, the number its pilot plans
    for power); 200 seeded audits without the confirmation. Under a true rate of 0.01 a count of 7 or more (above
    0.03) has probability 0.4%; the seeds are fixed, so the outcome is too. (With AUDIT_SEEDS = 1000: 11
    disagreements, 4 at the first look, 4 at the second and 3 at the last; 1.1%, 95% interval 0.55% to 1.96%.)
    With the confirmation (the default) none of the accusations stands: a rate of about ALPHA squared a row would
    give one in 200 with probability about 2%."""
    from gradstats import audit

    peer, problem, draws = correct_categorical_peer()
    monkeypatch.setattr(audit, "peer_gradients", draws)
    statuses = [audit.audit_one(peer, problem, seed=seed, confirm=False).status for seed in range(AUDIT_SEEDS)]
    assert statuses.count("disagrees") <= 6, statuses.count("disagrees")
    assert statuses.count("agrees") >= AUDIT_SEEDS - 6     # and the others reach a verdict: the draws suffice
    confirmed = [audit.audit_one(peer, problem, seed=seed).status for seed, status in enumerate(statuses)
                 if status == "disagrees"]
    assert "disagrees" not in confirmed, confirmed
