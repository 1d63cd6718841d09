"""storchastic 0.3.7's REBAR and RELAX on Bernoulli units: the conditional sample z~ ~ p(z | b) has the wrong law.

Both estimators need, besides the relaxed sample z, a second relaxed sample z~ drawn from the noise *given* the hard
sample b. Given b, the relaxed value sigmoid(z~ / temperature) is above 1/2 exactly when b = 1. Part 1 draws
storchastic's conditional samples (``conditional_gumbel_rsample``) and counts how many land on the wrong side.

The logistic noise given b is logit(p) + logit(v'), with v' uniform on (1 - p, 1) given b = 1 and on (0, 1 - p) given
b = 0. storchastic's v' is right, but it adds log(1 + p) and log(1 + v') (``log1p``) where logit subtracts
log(1 - p) and log(1 - v'). Part 2 runs its REBAR and RELAX on one unit (f(b) = (b - t)^2, t = 0.45, a = 0; the
gradient p(1 - p)(f(1) - f(0)) = 0.025), as they are and with only that line replaced, and prints each mean with its
standard error. RELAX is run from two initialisations of its control network: as published its bias depends on it,
corrected it does not. Needs only torch and storchastic 0.3.7; about a minute on two cores.

    python docs/reproducers/storchastic_rebar.py
"""

import math

import storch
import storch.method as sm
import storch.method.relax as storch_relax
import torch
from torch.distributions import Bernoulli

T, A = 0.45, 0.0
P = 1 / (1 + math.exp(-A))
GRADIENT = P * (1 - P) * ((1 - T) ** 2 - T**2)
PUBLISHED = storch_relax.conditional_gumbel_rsample


def corrected(hard_sample, probs, bernoulli, temperature):
    """The Bernoulli conditional sample with logit(p) + logit(v'), storchastic's v' kept; categorical unchanged."""
    if not bernoulli:
        return PUBLISHED(hard_sample, probs, bernoulli, temperature)
    eps = torch.finfo(probs.dtype).eps
    probs = probs.expand_as(hard_sample).clamp(eps, 1 - eps)
    v = torch.rand(hard_sample.shape, dtype=probs.dtype, device=probs.device).clamp(eps, 1 - eps)
    v_prime = torch.where(hard_sample == 1, v * probs + (1 - probs), v * (1 - probs))
    noise = probs.log() - torch.log1p(-probs) + v_prime.log() - torch.log1p(-v_prime)
    return torch.sigmoid(noise / temperature)


def use(sampler):
    storch_relax.conditional_gumbel_rsample = storch.conditional_gumbel_rsample = sampler


def wrong_side(sampler, p=0.5, n=100_000):
    torch.manual_seed(0)
    hard = torch.tensor([1.0, 0.0]).repeat(n)
    relaxed = sampler(hard, torch.full_like(hard, p), True, torch.tensor(1.0))
    return float((relaxed[hard == 1] <= 0.5).float().mean()), float((relaxed[hard == 0] >= 0.5).float().mean())


def draws(build, n, chunk=1_000, dtype=torch.float64, seed=12345):
    torch.manual_seed(seed)
    method = build()          # one object, as a training loop keeps it (RELAX's control network included)
    out = []
    for i in range(0, n, chunk):
        torch.manual_seed(seed + i)
        logits = torch.full((chunk, 1), A, dtype=dtype, requires_grad=True)
        try:
            z = method(Bernoulli(logits=storch.denote_independent(logits, 0, "draws")))
            storch.add_cost(storch.deterministic(lambda b: ((b.to(dtype) - T) ** 2).sum(-1))(z), "cost")
            storch.backward()
        finally:
            storch.reset()
        out.append(logits.grad.detach().flatten().double() * chunk)   # storch averages the cost over the plate
    return torch.cat(out)


def report(name, x):
    mean, se = float(x.mean()), float(x.std() / math.sqrt(len(x)))
    print(f"  {name:38s} mean {mean:+.5f} +- {se:.5f}   (mean - gradient) / se = {(mean - GRADIENT) / se:+6.1f}")


if __name__ == "__main__":
    print("1. share of conditional samples on the wrong side of 1/2 (0 for a correct sampler), p = 0.5:")
    for label, sampler in (("published", PUBLISHED), ("corrected", corrected)):
        ones, zeros = wrong_side(sampler)
        print(f"  {label:10s} given b = 1: {ones:.3f}   given b = 0: {zeros:.3f}")
    print(f"2. one unit, gradient p(1 - p)(f(1) - f(0)) = {GRADIENT:.5f}")
    for label, sampler in (("published", PUBLISHED), ("corrected", corrected)):
        use(sampler)
        print(f" {label} conditional sample:")
        report("REBAR", draws(lambda: sm.REBAR("z"), 40_000))
        for seed in (1, 2):
            report(f"RELAX(in_dim=1), control from seed {seed}",
                   draws(lambda: sm.RELAX("z", in_dim=1), 100_000, dtype=torch.float32, seed=seed))
    use(PUBLISHED)
