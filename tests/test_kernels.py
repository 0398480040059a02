"""The compiled CPU kernels (lifelong.functional.kernels): the loader and its cache, the counter-
based noise against known answers and a PyTorch reference, and UPGD's fused step against the
formula written out with PyTorch."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from helpers import require_native

from lifelong.functional.kernels import upgd as upgd_kernel
from lifelong.functional.kernels.counter_noise import counter_normal, threefry2x32_20

# Random123's known-answer vectors for Threefry2x32-20: (counter, key) -> output
THREEFRY_KAT = [
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x243F6A88, 0x85A308D3), (0x13198A2E, 0x03707344), (0xC4923A9C, 0x483DF7A0)),
]


@pytest.fixture(scope="module")
def library():
    lib = require_native("upgd")
    return upgd_kernel.library() or lib


@pytest.mark.parametrize("counter,key,want", THREEFRY_KAT)
def test_threefry_reference_and_kernel_give_the_known_answers(library, counter, key, want):
    got = threefry2x32_20((torch.tensor([counter[0]]), torch.tensor([counter[1]])), key)
    assert (int(got[0]), int(got[1])) == want
    assert upgd_kernel.threefry2x32_20(library, counter, key) == want


@pytest.mark.parametrize("n,tensor,step,key", [
    (1, 0, 1, (0, 0)), (1023, 3, 17, (1, 2)), (5000, 1, 2**33 + 5, (0xDEADBEEF, 7))])
def test_kernel_normals_equal_the_reference_box_muller(library, n, tensor, step, key):
    got = upgd_kernel.counter_normal(library, n, tensor, step, key).double()
    want = counter_normal(n, tensor, step, key)
    torch.testing.assert_close(got, want, rtol=0, atol=3e-6)


def test_counter_normals_are_standard_normal_and_independent(library):
    n = 1 << 20
    z = upgd_kernel.counter_normal(library, n, 0, 1, (11, 12)).double()
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert float(z.var()) == pytest.approx(1.0, abs=5 * math.sqrt(2 / n))
    assert float((z ** 4).mean()) == pytest.approx(3.0, abs=5 * math.sqrt(96 / n))
    # Kolmogorov–Smirnov distance to Φ, well under the 1% critical value 1.63/√n
    sorted_z = z.sort().values
    cdf = 0.5 * (1 + torch.erf(sorted_z / math.sqrt(2)))
    ranks = torch.arange(1, n + 1, dtype=torch.float64) / n
    assert float(torch.maximum(ranks - cdf, cdf - (ranks - 1 / n)).max()) < 1.63 / math.sqrt(n)
    # another step, another tensor, another key: uncorrelated draws
    for other in [upgd_kernel.counter_normal(library, n, 0, 2, (11, 12)),
                  upgd_kernel.counter_normal(library, n, 1, 1, (11, 12)),
                  upgd_kernel.counter_normal(library, n, 0, 1, (11, 13))]:
        assert abs(float(torch.corrcoef(torch.stack([z, other.double()]))[0, 1])) < 5 / math.sqrt(n)
    # the Box–Muller partners (elements q and q + 512 of each chunk) are uncorrelated too
    pairs = z.view(-1, 2, 512)
    assert abs(float((pairs[:, 0] * pairs[:, 1]).mean())) < 5 / math.sqrt(n / 2)


def reference_step(grads, params, utility, c, sigma, protect, wd, local, noise):
    """The kernel's step written with PyTorch in float64."""
    utility = [u.double() + c * g.double() * p.double() for u, g, p in zip(utility, grads, params)]
    maxima = [u.max() for u in utility]
    top = max(maxima) if not any(torch.isnan(m) for m in maxima) else torch.tensor(float("nan"))
    out = []
    for u, g, p, xi, m in zip(utility, grads, params, noise, maxima):
        m = m if local else top
        keep = torch.sigmoid(-u / m) if (m > 0 and torch.isfinite(m)) else torch.ones_like(u)
        g, xi = g.double(), sigma * xi.double()
        step = (g + xi) * keep if protect else g + xi * keep
        out.append(step + wd * p.double())
    return out, utility


@pytest.mark.parametrize("protect", [True, False])
@pytest.mark.parametrize("local", [False, True])
@pytest.mark.parametrize("noise", ["given", "counter"])
@pytest.mark.parametrize("wd", [0.0, 0.3])
def test_fused_step_equals_the_formula(library, protect, local, noise, wd):
    generator = torch.Generator().manual_seed(0)
    shapes = [(37, 41), (41,), (3000,), (5, 7)]  # one spans chunks, with a tail
    params = [torch.randn(s, generator=generator) for s in shapes]
    utility = [torch.randn(s, generator=generator) * 0.1 for s in shapes]
    utility[3].fill_(-1.0)  # a tensor without positive utility: open under local scaling
    grads = [torch.randn(s, generator=generator) for s in shapes]
    step, key = 9, (5, 6)
    given = [torch.randn(s, generator=generator) for s in shapes]
    xi = given if noise == "given" else [
        counter_normal(p.numel(), t, step, key).view(p.shape) for t, p in enumerate(params)]
    want, want_utility = reference_step(grads, params, utility, -0.7, 0.2, protect, wd, local, xi)
    kernel = upgd_kernel.UPGDKernel(library, params, utility)
    kernel.step(grads, -0.7, True, 0.2, protect, wd, local, step, key,
                given if noise == "given" else None)
    for got, w in zip(utility, want_utility):
        torch.testing.assert_close(got.double(), w, rtol=1e-5, atol=1e-6)
    for got, w in zip(grads, want):
        torch.testing.assert_close(got.double(), w, rtol=1e-5, atol=1e-5)
    assert float(kernel.maxima[-1]) == pytest.approx(float(max(u.max() for u in want_utility)))


def test_fused_step_guards_a_nan_or_non_positive_maximum(library):
    params = [torch.ones(4), torch.ones(3)]
    grads = [torch.full((4,), 2.0), torch.full((3,), -1.0)]
    utility = [torch.zeros(4), torch.zeros(3)]  # after the trace: −2 (all ≤ 0) and +1
    kernel = upgd_kernel.UPGDKernel(library, params, utility)
    kernel.step(grads, -1.0, True, 0.0, True, 0.0, True, 1, (0, 0))
    assert torch.equal(grads[0], torch.full((4,), 2.0))  # local M = −2 ≤ 0: gate 1
    torch.testing.assert_close(grads[1], torch.full((3,), -1.0) * torch.sigmoid(torch.tensor(-1.)))
    grads = [torch.tensor([1.0, float("nan"), 1.0, 1.0]), torch.ones(3)]
    kernel.step(grads, -1.0, True, 0.0, True, 0.0, False, 2, (0, 0))
    assert math.isnan(float(kernel.maxima[-1]))
    assert torch.equal(grads[1], torch.ones(3))  # global M is NaN: gate 1 everywhere


def test_fused_step_refuses_gradients_it_cannot_read(library):
    params = [torch.ones(4, 4)]
    kernel = upgd_kernel.UPGDKernel(library, params, [torch.zeros(4, 4)])
    for wrong in (torch.ones(4, 4).t(), torch.ones(2, 4), torch.ones(4, 4, dtype=torch.float64)):
        with pytest.raises(ValueError, match="contiguous float32"):
            kernel.step([wrong], 1.0, True, 0.0, True, 0.0, False, 1, (0, 0))


LOAD = ("import json, sys; from lifelong.functional import kernels; "
        "lib = kernels.load('upgd'); print(json.dumps([lib is not None, "
        "kernels.unavailable('upgd')]))")


def run_load(tmp_path, **env) -> tuple[bool, str | None]:
    environment = {**os.environ, "LIFELONG_CACHE_DIR": str(tmp_path), **env}
    done = subprocess.run([sys.executable, "-c", LOAD], capture_output=True, text=True,
                          env=environment, timeout=120, check=True)
    import json
    return tuple(json.loads(done.stdout))


@pytest.mark.slow
def test_kernels_compile_once_into_the_cache(library, tmp_path):
    assert run_load(tmp_path) == (True, None)
    built = list((tmp_path / "kernels").glob("upgd-*.so"))
    assert len(built) == 1 and not list((tmp_path / "kernels").glob("*.part"))
    stamp = built[0].stat().st_mtime_ns
    assert run_load(tmp_path) == (True, None)  # a second process reuses the library
    assert built[0].stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_kernels_can_be_disabled_or_fail_to_build(tmp_path):
    loaded, why = run_load(tmp_path, LIFELONG_NATIVE="0")
    assert not loaded and "LIFELONG_NATIVE" in why
    loaded, why = run_load(tmp_path, CC="false")
    assert not loaded and "failed" in why
    assert not (tmp_path / "kernels").exists() or not list((tmp_path / "kernels").iterdir())


FALLBACK = """
import warnings, torch
from lifelong.methods.upgd import UPGD
from lifelong.methods.cbp import CBP
model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    upgd = UPGD().attach(model, torch.optim.SGD(model.parameters(), lr=0.1))
    cbp = CBP().attach(model, torch.optim.SGD(model.parameters(), lr=0.1))
model(torch.randn(1, 4)).sum().backward()
upgd.transform_grads()
print(upgd._kernel is None, cbp._kernel is None, upgd.noise.source,
      sum("PyTorch path" in str(w.message) for w in caught))
"""


@pytest.mark.slow
@pytest.mark.parametrize("env,warned", [({"CC": "false"}, 2), ({"LIFELONG_NATIVE": "0"}, 0),
                                        ({"LIFELONG_CACHE_DIR": "/proc/not-writable"}, 2)])
def test_methods_fall_back_to_pytorch_without_the_kernels(tmp_path, env, warned):
    """A failed build (no working compiler, a cache folder that cannot be written) warns once
    per method and runs the PyTorch path (table noise on the CPU); LIFELONG_NATIVE=0 does the
    same silently."""
    done = subprocess.run([sys.executable, "-c", FALLBACK], capture_output=True, text=True,
                          env={**os.environ, "LIFELONG_CACHE_DIR": str(tmp_path), **env},
                          timeout=120, check=True)
    assert done.stdout.split() == ["True", "True", "table", str(warned)]
