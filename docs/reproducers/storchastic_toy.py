"""storchastic 0.3.7's Bernoulli estimators on one unit, against the closed-form gradient.

Last, its moving-average baseline on one cost: the value it returns for a cost already contains that cost.

One unit b ~ Bernoulli(sigmoid(a)) with f(b) = (b - t)^2, t = 0.45, a = 0. The gradient of E[f(b)] with respect to
a is p (1 - p) (f(1) - f(0)) = 0.025. Each estimator gets its own row of logits per draw (an independent plate),
so one backward pass gives every draw's gradient; the mean and its standard error are printed beside 0.025.
Needs only torch and storchastic 0.3.7 (pip install storchastic==0.3.7).

    python docs/reproducers/storchastic_toy.py
"""

import math

import storch
import storch.method as sm
import torch
from torch.distributions import Bernoulli

T, A, DRAWS = 0.45, 0.0, 20_000
P = 1 / (1 + math.exp(-A))
GRADIENT = P * (1 - P) * ((1 - T) ** 2 - T**2)

ESTIMATORS = {
    "ScoreFunction (unbiased reference)": lambda: sm.ScoreFunction("z"),
    "DisARM": lambda: sm.DisARM("z"),
    "REBAR": lambda: sm.REBAR("z"),
    "RELAX(in_dim=1) (float32, as it requires)": lambda: sm.RELAX("z", in_dim=1),
    "ScoreFunctionWOR(k=2, biased=False)": lambda: sm.ScoreFunctionWOR("z", k=2, biased=False),
    "UnorderedSetEstimator(k=2)": lambda: sm.UnorderedSetEstimator("z", k=2),
}


def draws(build, n: int, chunk: int = 1_000, dtype=torch.float64) -> torch.Tensor:
    torch.manual_seed(12345)
    method = build()          # one object, as a training loop keeps it (RELAX's control network included)
    out = []
    for i in range(0, n, chunk):
        torch.manual_seed(i)
        logits = torch.full((chunk, 1), A, dtype=dtype, requires_grad=True)
        try:
            z = method(Bernoulli(logits=storch.denote_independent(logits, 0, "draws")))
            storch.add_cost(storch.deterministic(lambda b: ((b.to(dtype) - T) ** 2).sum(-1))(z), "cost")
            storch.backward()
        finally:
            storch.reset()
        out.append(logits.grad.detach().flatten().double() * chunk)   # storch averages the cost over the plate
    return torch.cat(out)


if __name__ == "__main__":
    print(f"closed-form gradient p(1 - p)(f(1) - f(0)) = {GRADIENT:.6f}")
    for name, build in ESTIMATORS.items():
        relax = name.startswith("RELAX")
        x = draws(build, 5 * DRAWS if relax else DRAWS, dtype=torch.float32 if relax else torch.float64)
        mean, se = float(x.mean()), float(x.std() / math.sqrt(len(x)))
        if se <= 1e-12 * abs(mean):
            print(f"{name:40s} every draw {mean:+.6f} (no noise): off by {100 * (mean / GRADIENT - 1):+.2f}%")
        else:
            print(f"{name:40s} mean {mean:+.6f} +- {se:.6f}   (mean - gradient) / se = {(mean - GRADIENT) / se:+.1f}")

    from storch.method.baseline import MovingAverageBaseline

    baseline = MovingAverageBaseline(exponential_decay=0.95)
    first = float(baseline.compute_baseline(None, storch.Tensor(torch.tensor(1.0), [], [])))
    print(f"MovingAverageBaseline(0.95), fresh, given a cost of 1 returns {first:.4f}: the draw's own cost enters its "
          f"baseline with weight 0.05, so the estimator's mean is 0.95 times the gradient")
