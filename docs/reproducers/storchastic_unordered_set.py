"""storchastic 0.3.7's UnorderedSetEstimator: its second-order leave-one-out ratio, against Kool et al.'s.

For k = 2 samples without replacement S = {s, s'} of the joint state of independent Bernoulli units, the
estimator's built-in baseline weights the other sample's cost by p(s') R, where R, the ratio of leaving s and then
s' out, is p^{D \\ s \\ s'}(empty set) / p^{D \\ s}({s'}) = (1 - p(s)) / p(s') (Kool, van Hoof & Welling 2020).
storchastic stores the logarithms of these ratios in the plate's ``log_snd_leave_one_out``. This script prints
them beside the exact values, for a finer and finer quadrature: they converge, but not to the exact ratios.
Then it integrates, with the same quadrature, the integrand with the left-out sample's own factor removed a second
time, and finds storchastic's numbers. Needs only torch and storchastic 0.3.7.

    python docs/reproducers/storchastic_unordered_set.py
"""

import math

import storch
import storch.method as sm
import torch
from torch.distributions import Bernoulli

torch.set_default_dtype(torch.float64)
LOGITS = torch.tensor([0.3, -1.0, 0.8])   # three independent units
A = 5.0                                   # storchastic's default stabilising constant


def peer_ratios(points: int):
    """A sampled pair, its states' probabilities and storchastic's leave-two-out ratios [2, 2]."""
    torch.manual_seed(0)
    logits = LOGITS.expand(3, -1).clone().requires_grad_(True)
    try:
        z = sm.UnorderedSetEstimator("z", k=2, num_int_points=points)(
            Bernoulli(logits=storch.denote_independent(logits, 0, "draws")))
        snd = z.plates[1].log_snd_leave_one_out
        ratios = (snd._tensor if hasattr(snd, "_tensor") else snd).detach()[0].exp()
        pair = z._tensor.detach()[0]
    finally:
        storch.reset()
    p = torch.sigmoid(LOGITS)
    probs = (pair * p + (1 - pair) * (1 - p)).prod(1)
    return pair, float(probs[0]), float(probs[1]), ratios


def own_factor_twice(p_s: float, p_other: float, points: int) -> float:
    """The ratio from integrands where leaving s out removes s's factor twice (what storchastic computes)."""
    v = torch.arange(1, points) / points
    log_v = v.log()

    def factor(q):
        return torch.log(1 - torch.exp(math.exp(A) * q * log_v) + 1e-6)

    rest = math.expm1(A + math.log(1 - p_s - p_other + 1e-6)) * log_v
    without_s = (factor(p_other) + rest).logsumexp(0)
    twice = (factor(p_other) - factor(p_s) + rest).logsumexp(0)
    return float((twice - without_s).exp())


if __name__ == "__main__":
    for points in (1_000, 10_000, 100_000):
        pair, p_a, p_b, ratios = peer_ratios(points)
        print(f"{points:>7} points: sample {pair.tolist()}, p = {p_a:.4f}, {p_b:.4f}")
        print(f"   storchastic's ratios [[a, b], [b, a]]: {float(ratios[0, 1]):.4f}, {float(ratios[1, 0]):.4f}")
        print(f"   exact (1 - p(s)) / p(s'):             {(1 - p_a) / p_b:.4f}, {(1 - p_b) / p_a:.4f}")
        print(f"   own factor removed twice:              {own_factor_twice(p_a, p_b, points):.4f}, "
              f"{own_factor_twice(p_b, p_a, points):.4f}")
