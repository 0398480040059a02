"""lifelong.functional.upgd against the paper's formulas (Elsayed & Mahmood 2024) recomputed in
float64 on a tiny network: the trace, its bias correction, the global and local scaling, the gate
with its guard, noise, weight decay, the feature-level utility and the second-order term."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lifelong.functional import upgd as F
from lifelong.functional.hessian import LinearCurvature


def tiny_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def reference(theta, grads, noise, *, lr, beta, sigma, wd, protect, local):
    """The update written out in float64: ū ← βū + (1 − β)(−g⊙θ), û = ū / (1 − βᵗ), M = max û
    (over everything, or per tensor), s = sigmoid(û / M) (s = 0 if M ≤ 0), then
    θ ← (1 − lr·wd)θ − lr(g + σξ)(1 − s) or − lr(g + σξ(1 − s))."""
    theta = [t.copy() for t in theta]
    trace = [np.zeros_like(t) for t in theta]
    for step, (g, xi) in enumerate(zip(grads, noise), start=1):
        trace = [beta * u + (1 - beta) * (-gi * th) for u, gi, th in zip(trace, g, theta)]
        hat = [u / (1 - beta ** step) for u in trace]
        tops = [u.max() for u in hat] if local else [max(u.max() for u in hat)] * len(hat)
        s = [sigmoid(u / m) if m > 0 else np.zeros_like(u) for u, m in zip(hat, tops)]
        if protect:
            change = [(gi + sigma * x) * (1 - si) for gi, x, si in zip(g, xi, s)]
        else:
            change = [gi + sigma * x * (1 - si) for gi, x, si in zip(g, xi, s)]
        theta = [(1 - lr * wd) * th - lr * c for th, c in zip(theta, change)]
    return theta


@pytest.mark.parametrize("on_host", [True, False], ids=["host", "device"])
@pytest.mark.parametrize("out_of_place", [False, True], ids=["in-place", "into-noise"])
@pytest.mark.parametrize("steps,beta,sigma,wd,protect,local", [
    (6, 0.9, 0.0, 0.0, True, False),
    (6, 0.9, 0.3, 0.0, True, True),
    (6, 0.999, 0.3, 0.5, False, False),
    (6, 0.0, 0.3, 0.1, False, True),  # β = 0: the utility is the last step's
    (90, 0.5, 0.1, 0.0, True, False),  # the stored trace is rescaled about every 40 steps
])
def test_steps_of_the_core_equal_the_formula(steps, beta, sigma, wd, protect, local, on_host,
                                             out_of_place) -> None:
    params = [p.detach().clone() for p in tiny_net().parameters()]
    generator = torch.Generator().manual_seed(1)
    grads = [[torch.randn(p.shape, generator=generator) for p in params] for _ in range(steps)]
    noise = [[torch.randn(p.shape, generator=generator) for p in params] for _ in range(steps)]
    want = reference([p.double().numpy() for p in params],
                     [[g.double().numpy() for g in step] for step in grads],
                     [[x.double().numpy() for x in step] for step in noise],
                     lr=0.1, beta=beta, sigma=sigma, wd=wd, protect=protect, local=local)
    state, layout = F.init_weights(params)
    for g, xi in zip(grads, noise):
        xi = [x.clone() for x in xi] if sigma else None
        g = [x.clone() for x in g]
        out = (xi if xi is not None else [torch.empty_like(p) for p in params]) \
            if out_of_place else g
        coefficient = F.advance(state, beta)
        F.add_weight_utility_(layout.utility, g, params, coefficient)
        F.perturb_and_gate_(g, out, xi, state, layout, sigma=sigma, protect=protect,
                            local=local, on_host=on_host)
        F.add_weight_decay_(out, params, wd)
        torch._foreach_add_(params, out, alpha=-0.1)
    if steps > 50:
        assert state.origin > 0
    for got, expected in zip(params, want):
        np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_in_place_and_into_the_noise_buffer_give_the_same_bits() -> None:
    """`lifelong.optim.UPGD` builds g' in the noise buffer, the method in p.grad: same numbers."""
    params = [p.detach() for p in tiny_net().parameters()]
    generator = torch.Generator().manual_seed(2)
    g = [torch.randn(p.shape, generator=generator) for p in params]
    xi = [torch.randn(p.shape, generator=generator) for p in params]
    for protect in (True, False):
        results = []
        for in_place in (True, False):
            state, layout = F.init_weights(params)
            grads, noise = [x.clone() for x in g], [x.clone() for x in xi]
            F.add_weight_utility_(layout.utility, grads, params, F.advance(state, 0.9))
            out = grads if in_place else noise
            F.perturb_and_gate_(grads, out, noise, state, layout, sigma=0.2, protect=protect,
                                local=False, on_host=True)
            results.append(out)
        assert all(torch.equal(a, b) for a, b in zip(*results))


def test_trace_bias_correction_and_rescaling() -> None:
    """v·β^(t − origin) is ū at every step; û = ū / (1 − βᵗ); rescaling zeroes only entries
    below 2⁻³⁰ of the largest."""
    trace = torch.zeros(3, dtype=torch.float64)
    state = F.UPGDState(trace.clone())
    u_bar = torch.zeros(3, dtype=torch.float64)
    beta = 0.5
    for t in range(1, 120):
        u = torch.tensor([1.0, -2.0, 2.0 ** -40 if t == 1 else 0.0], dtype=torch.float64)
        u_bar = beta * u_bar + (1 - beta) * u
        state.trace.add_(u, alpha=F.advance(state, beta))
        torch.testing.assert_close(state.trace[:2] * beta ** (t - state.origin), u_bar[:2],
                                   rtol=1e-12, atol=0)
        torch.testing.assert_close(state.trace[:2] * F.corrected_scale(state, beta),
                                   u_bar[:2] / (1 - beta ** t), rtol=1e-12, atol=0)
    assert state.origin > 0 and float(state.trace[2]) == 0.0  # the tiny entry was dropped


@pytest.mark.parametrize("on_host", [True, False])
def test_the_guard_protects_nothing_without_a_positive_finite_maximum(on_host) -> None:
    like = [torch.empty(2, 3), torch.empty(2)]
    x = [torch.randn(2, 3), torch.randn(2)]
    state, layout = F.init_weights(like)
    for trace, local, expected in [
        ([[-1.0] * 6, [-2.0, 0.0]], False, [1.0, 1.0]),  # M ≤ 0
        ([[float("nan")] + [1.0] * 5, [1.0, 1.0]], False, [1.0, 1.0]),  # M not finite
        ([[-1.0] * 6, [3.0, 1.0]], True, [1.0, None]),  # local: only the weight's M ≤ 0
    ]:
        state.trace.copy_(torch.tensor(trace[0] + trace[1]))
        out = [torch.empty_like(t) for t in x]
        F.gate_(x, out, state, layout, local=local, on_host=on_host)
        for got, given, keep in zip(out, x, expected):
            if keep is not None:
                assert torch.equal(got, given)
        if local:  # the bias's own M = 3: 1 − s = sigmoid(−u/3)
            torch.testing.assert_close(out[1], x[1] * torch.sigmoid(-torch.tensor([1.0, 1 / 3])))


def test_feature_utility_is_that_of_the_pre_activations() -> None:
    """u_j = −Σ_b ∂L/∂z_bj z_bj for each hidden unit's pre-activation z, by autograd in float64,
    and the second-order term ½ Σ_b ĥ_z,bj z_bj² added from the curvature given."""
    model = tiny_net().double()
    x = torch.randn(7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    hidden = [model[0], model[2]]
    z = []

    def keep(module, args, out) -> None:
        out.retain_grad()
        z.append(out)

    hooks = [m.register_forward_hook(keep) for m in hidden]
    loss = model(x).square().sum()
    loss.backward()
    for h in hooks:
        h.remove()
    expected = torch.cat([-(zi.grad * zi).sum(0) for zi in z]).detach()
    state, layout = F.init_units([4, 3], [True, True], torch.zeros(1, dtype=torch.float64))
    grads = [p.grad for m in hidden for p in (m.weight, m.bias)]
    params = [p.detach() for m in hidden for p in (m.weight, m.bias)]
    curvature = [torch.rand(4, dtype=torch.float64), None]
    F.add_unit_utility_(layout.segments, grads, params, [True, True], 0.2,
                        curvature)
    expected[:4] += 0.5 * curvature[0]
    torch.testing.assert_close(state.trace, 0.2 * expected)


def test_second_order_term_enters_per_parameter() -> None:
    layer = nn.Linear(3, 2).double()
    params = [p.detach() for p in layer.parameters()]
    state, layout = F.init_weights(params)
    h = [torch.rand(2, 3, dtype=torch.float64), torch.rand(2, dtype=torch.float64)]
    expected = [0.5 * 0.3 * hi * p ** 2 for hi, p in zip(h, params)]
    F.add_curvature_(layout.utility, params, {id(p): i for i, p in enumerate(layer.parameters())},
                     {layer: LinearCurvature(h[0].clone(), h[1].clone(), None)}, 0.3)
    for got, want in zip(layout.utility, expected):
        torch.testing.assert_close(got, want)
