"""MIGU against an independent computation: per layer, the output magnitudes Σ|x·w_i + b_i| from
inputs captured here, numpy's 0.7 quantile, and the masked SGD update they imply."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_mlp, toy_scenario

from lifelong.core import Batch, build_method, check_compatible
from lifelong.core.probe import probe as measuring
from lifelong.errors import ConfigError
from lifelong.methods import MIGU
from lifelong.models.hf import build_hf_model

LR = 0.5


def keep(magnitudes: np.ndarray, threshold: float = 0.7) -> np.ndarray:
    """The paper's mask: output dimensions whose magnitude reaches the T-quantile."""
    return magnitudes >= np.quantile(magnitudes, threshold)


def mlp_magnitudes(params: list[torch.Tensor], *xs: torch.Tensor) -> list[np.ndarray]:
    """Σ over samples of |pre-activation| of each layer of Linear-ReLU-Linear, by hand."""
    w1, b1, w2, b2 = [p.detach().double().numpy() for p in params]
    m1, m2 = 0.0, 0.0
    for x in xs:
        h = x.double().numpy() @ w1.T + b1
        m1 = m1 + np.abs(h).sum(0)
        m2 = m2 + np.abs(np.maximum(h, 0) @ w2.T + b2).sum(0)
    return [m1, m2]


def capture_grads(optimizer: torch.optim.Optimizer) -> dict[int, torch.Tensor]:
    """The gradients as the optimizer step begins (register before attaching MIGU)."""
    grads: dict[int, torch.Tensor] = {}

    def hook(opt, args, kwargs):
        for group in opt.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    grads[id(p)] = p.grad.clone()
    optimizer.register_step_pre_hook(hook)
    return grads


def check_mlp_update(before, model, grads, masks) -> None:
    (w1, b1, w2, b2), (k1, k2) = before, [torch.from_numpy(k).float() for k in masks]
    p = list(model.parameters())
    torch.testing.assert_close(p[0].detach(), w1 - LR * grads[id(p[0])] * k1[:, None])
    torch.testing.assert_close(p[1].detach(), b1 - LR * grads[id(p[1])] * k1)
    torch.testing.assert_close(p[2].detach(), w2 - LR * grads[id(p[2])] * k2[:, None])
    torch.testing.assert_close(p[3].detach(), b2 - LR * grads[id(p[3])] * k2)


def mlp_setup(**config):
    model = tiny_mlp(hidden=16)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    grads = capture_grads(optimizer)
    method = MIGU(**config).attach(model, optimizer, seed=0)
    return model, optimizer, grads, method


def train_step(model, optimizer, *xs, step=True) -> None:
    optimizer.zero_grad()
    for x in xs:
        F.cross_entropy(model(x), torch.arange(len(x)) % 4).backward()
    if step:
        optimizer.step()


def test_mlp_update_is_sgd_masked_by_output_magnitude_quantile() -> None:
    torch.manual_seed(1)
    model, optimizer, grads, _ = mlp_setup()
    x = torch.randn(10, 8)
    before = [p.detach().clone() for p in model.parameters()]
    masks = [keep(m) for m in mlp_magnitudes(before, x)]
    assert [int(k.sum()) for k in masks] == [5, 1]  # 16 units: top 30% learn; 4 units: 1
    train_step(model, optimizer, x)
    check_mlp_update(before, model, grads, masks)


def test_quantile_rank_that_falls_on_a_value_keeps_that_value() -> None:
    torch.manual_seed(9)
    model, optimizer, grads, _ = mlp_setup(threshold=0.6)  # 0.6 · (16 − 1) = 9 exactly
    x = torch.randn(10, 8)
    before = [p.detach().clone() for p in model.parameters()]
    masks = [keep(m, 0.6) for m in mlp_magnitudes(before, x)]
    assert [int(k.sum()) for k in masks] == [7, 2]
    train_step(model, optimizer, x)
    check_mlp_update(before, model, grads, masks)


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-gpt2"])
def test_transformer_update_matches_per_layer_masks(name: str) -> None:
    pytest.importorskip("transformers", reason="the hf extra is not installed")
    from transformers.pytorch_utils import Conv1D as conv1d

    torch.manual_seed(0)
    model = build_hf_model(name, 3, generation=name != "tiny-bert", vocab_size=260, dropout=0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    grads = capture_grads(optimizer)
    MIGU().attach(model, optimizer, seed=0)
    inputs: list[tuple[torch.nn.Module, torch.Tensor]] = []
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, conv1d)):
            module.register_forward_pre_hook(lambda m, args: inputs.append((m, args[0].detach())))
    before = {id(p): p.detach().clone() for p in model.parameters()}
    x = torch.randint(4, 260, (4, 12))
    x[:, 9:] = -1  # padding: the layers still see (and count) those positions
    model.train()
    optimizer.zero_grad()
    model(x).float().logsumexp(-1).mean().backward()
    optimizer.step()

    expected = {id(p): before[id(p)] - 0.1 * grads[id(p)] for p in model.parameters()
                if id(p) in grads}
    masked = 0
    for module, inp in inputs:
        w = before[id(module.weight)].double()
        b = 0 if module.bias is None else before[id(module.bias)].double()
        flat = inp.double().reshape(-1, inp.shape[-1])
        out = flat @ w.T + b if isinstance(module, torch.nn.Linear) else flat @ w + b
        k = torch.from_numpy(keep(out.abs().sum(0).numpy())).float()
        if id(module.weight) in grads:
            shaped = k[:, None] if isinstance(module, torch.nn.Linear) else k[None, :]
            expected[id(module.weight)] = before[id(module.weight)] - 0.1 * grads[
                id(module.weight)] * shaped
            masked += 1
        if module.bias is not None and id(module.bias) in grads:
            expected[id(module.bias)] = before[id(module.bias)] - 0.1 * grads[id(module.bias)] * k
    assert masked >= 9  # every attention/FFN projection and the head
    for p in model.parameters():
        torch.testing.assert_close(p.detach(), expected.get(id(p), before[id(p)]),
                                   rtol=1e-5, atol=1e-6)


def test_gradient_accumulation_masks_by_the_sum_over_micro_batches() -> None:
    torch.manual_seed(2)
    model, optimizer, grads, _ = mlp_setup()
    x1, x2 = torch.randn(6, 8), 3 * torch.randn(6, 8) + 1
    before = [p.detach().clone() for p in model.parameters()]
    summed = [keep(m) for m in mlp_magnitudes(before, x1, x2)]
    last_only = [keep(m) for m in mlp_magnitudes(before, x2)]
    assert any((s != o).any() for s, o in zip(summed, last_only))  # the test can tell
    train_step(model, optimizer, x1, x2)
    check_mlp_update(before, model, grads, summed)


def check_lora_layer(layer, inp, before, grads) -> bool:
    """The newest (trainable) adapter's A is masked by |x·A|, its B by the layer's total output
    x·W + b + Σ_adapters (α/r)·x·A·B; returns whether B's own output would mask differently."""
    names = list(layer.lora_A)
    name = [n for n in names if layer.lora_A[n].weight.requires_grad][-1]
    inp = inp.detach().double()
    w0, b0 = layer.base_layer.weight.double(), layer.base_layer.bias.double()
    total = inp @ w0.T + b0
    for n in layer.active_adapters:
        xa = inp @ before[id(layer.lora_A[n].weight)].double().T
        lora = layer.scaling[n] * xa @ before[id(layer.lora_B[n].weight)].double().T
        total = total + lora
        if n == name:
            own_xa, own = xa, lora
    a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
    keep_a = torch.from_numpy(keep(own_xa.abs().sum(0).numpy())).float()
    keep_b = torch.from_numpy(keep(total.abs().sum(0).numpy())).float()
    assert 0 < keep_a.sum() < len(keep_a) and 0 < keep_b.sum() < len(keep_b)
    torch.testing.assert_close(a.detach(), before[id(a)] - LR * grads[id(a)] * keep_a[:, None])
    torch.testing.assert_close(b.detach(), before[id(b)] - LR * grads[id(b)] * keep_b[:, None])
    assert torch.equal(layer.base_layer.weight, before[id(layer.base_layer.weight)])
    return bool((keep_b != torch.from_numpy(keep(own.abs().sum(0).numpy()))).any())


def test_lora_masks_a_by_its_output_and_b_by_the_layers_total_output() -> None:
    peft = pytest.importorskip("peft", reason="the hf extra is not installed")
    model = tiny_mlp(hidden=32, seed=3)
    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["0", "2"], lora_dropout=0.0,
                             init_lora_weights=False)  # B ≠ 0, so A gets a gradient
    model = peft.inject_adapter_in_model(config, model)
    layers = [model[0], model[2]]
    assert not any(layer.base_layer.weight.requires_grad for layer in layers)
    assert layers[0].scaling["default"] == 2.0
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    grads = capture_grads(optimizer)
    MIGU().attach(model, optimizer, seed=0)
    inputs = {}
    for layer in layers:
        layer.register_forward_pre_hook(lambda m, args: inputs.__setitem__(id(m), args[0]))
    before = {id(p): p.detach().clone() for p in model.parameters()}
    train_step(model, optimizer, torch.randn(12, 8))
    told_apart = [check_lora_layer(layer, inputs[id(layer)], before, grads) for layer in layers]
    assert any(told_apart)  # B's own output would give another mask than the total output


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.head = torch.nn.Linear(8, 32), torch.nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc(x)))


@pytest.mark.parametrize("spec", ["lora+migu", "migu+lora", "migu+inc-lora"])
def test_masks_the_adapters_of_the_lora_methods_in_any_order(spec: str) -> None:
    pytest.importorskip("peft", reason="the hf extra is not installed")
    torch.manual_seed(10)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    grads = capture_grads(optimizer)
    lora = next(name for name in spec.split("+") if name != "migu")
    method = build_method(spec, {lora: {"r": 4, "alpha": 8.0}}).attach(model, optimizer, seed=0)
    inputs = {}
    model.fc.register_forward_pre_hook(lambda m, args: inputs.__setitem__("fc", args[0]))
    model.head.register_forward_pre_hook(lambda m, args: inputs.__setitem__("head", args[0]))
    for task in (0, 1) if lora == "inc-lora" else (0,):
        if lora == "inc-lora":  # a new adapter at task 1; `lora` runs without task boundaries
            method.before_task(task)
        with torch.no_grad():  # B starts at zero; random B lets A learn and A's mask matter
            for b in model.fc.lora_B.values():
                if b.weight.requires_grad:
                    b.weight.normal_()
        before = {id(p): p.detach().clone() for p in model.parameters()}
        grads.clear()
        train_step(model, optimizer, torch.randn(12, 8) + task)
        assert len(model.fc.lora_A) == task + 1
        check_lora_layer(model.fc, inputs["fc"], before, grads)
        h, w, b = inputs["head"].detach().double(), model.head.weight, model.head.bias
        k = torch.from_numpy(keep((h @ before[id(w)].double().T + before[id(b)].double())
                                  .abs().sum(0).numpy())).float()
        torch.testing.assert_close(w.detach(), before[id(w)] - LR * grads[id(w)] * k[:, None])


def test_probes_and_evaluation_passes_do_not_count() -> None:
    torch.manual_seed(4)
    x, probe = torch.randn(10, 8), 50 * torch.randn(10, 8) + 5
    model = tiny_mlp(hidden=16)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    grads = capture_grads(optimizer)
    in_step_probe = []  # a probe inside the optimizer step, before MIGU's mask (A-GEM's g_ref)

    def probe_in_step(*args) -> None:
        if in_step_probe:
            with measuring(model, None):  # in the training step's mode, as loss_gradients
                model(probe).sum()
    optimizer.register_step_pre_hook(probe_in_step)
    method = MIGU().attach(model, optimizer, seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    alone = [keep(m) for m in mlp_magnitudes(before, x)]
    assert any((keep(m) != k).any() for m, k in zip(mlp_magnitudes(before, x, probe), alone))

    train_step(model, optimizer, x, step=False)
    counted = method.magnitudes
    model.eval()
    model(probe).sum().backward()  # eval mode (EWC's Fisher, evaluation)
    model.train()
    with torch.no_grad():
        model(probe)
    with torch.inference_mode():
        model(probe)
    params = {k: v.detach() for k, v in model.named_parameters()}
    with measuring(model, True):  # per-sample gradients in training mode
        torch.func.vmap(torch.func.grad(
            lambda p, s: torch.func.functional_call(model, p, (s[None],)).sum()),
            in_dims=(None, 0))(params, probe)
    for got, want in zip(method.magnitudes, counted):
        assert torch.equal(got, want)

    in_step_probe.append(True)
    train_step(model, optimizer, x)
    check_mlp_update(before, model, grads, alone)

    model(probe).sum().backward()  # a training-mode pass at the task boundary (SPG)
    assert any(m.any() for m in method.magnitudes)
    method.before_task(1)
    assert all(not m.any() for m in method.magnitudes)


@pytest.mark.parametrize("spec", ["agem+migu", "migu+agem"])
def test_a_gem_reference_pass_inside_the_step_does_not_count(spec: str) -> None:
    torch.manual_seed(11)
    model = tiny_mlp(hidden=16)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    method = build_method(spec, {"agem": {"buffer": "reservoir", "ref_batch_size": 16}})
    method.attach(model, optimizer, seed=0)
    migu, agem = (next(m for m in method.members if m.name == name) for name in ("migu", "agem"))
    seen, references = [], []
    transform, reference = migu.transform_grads, agem.loss_gradients
    migu.transform_grads = lambda: (seen.append(migu.magnitudes), transform())
    agem.loss_gradients = lambda *args: references.append(1) or reference(*args)
    method.prepare_batch(Batch(50 * torch.randn(16, 8) + 5, torch.arange(16) % 4))  # memory
    x = torch.randn(10, 8)
    before = [p.detach().clone() for p in model.parameters()]
    train_step(model, optimizer, x)
    assert references  # A-GEM made its pass inside the step, before or after MIGU's mask
    assert not any(m.any() for m in migu.magnitudes)  # nor counted for the next update
    for got, want in zip(seen[0], mlp_magnitudes(before, x)):  # the training batch's alone
        np.testing.assert_allclose(got[0].double().numpy(), want, rtol=1e-5)


def test_first_task_option() -> None:
    torch.manual_seed(5)
    x = torch.randn(10, 8)
    assert MIGU().needs_task_boundaries is False  # task-free by default, like the paper
    for mask_first in (True, False):
        model, optimizer, grads, method = mlp_setup(mask_first_task=mask_first)
        method.before_task(0)
        before = [p.detach().clone() for p in model.parameters()]
        masks = [keep(m) for m in mlp_magnitudes(before, x)]
        train_step(model, optimizer, x)
        unmasked = [np.ones_like(k) for k in masks]
        check_mlp_update(before, model, grads, masks if mask_first else unmasked)
        assert all(not m.any() for m in method.magnitudes)
        method.before_task(1)
        before = [p.detach().clone() for p in model.parameters()]
        train_step(model, optimizer, x)
        check_mlp_update(before, model, grads, [keep(m) for m in mlp_magnitudes(before, x)])
    reference = MIGU(mask_first_task=False)
    assert reference.needs_task_boundaries is True
    with pytest.raises(ConfigError, match="needs task boundaries"):
        check_compatible(reference, "class", task_boundaries=False)


def test_mask_head_false_leaves_the_output_layer_unmasked() -> None:
    torch.manual_seed(6)
    model, optimizer, grads, _ = mlp_setup(mask_head=False)
    x = torch.randn(10, 8)
    before = [p.detach().clone() for p in model.parameters()]
    masks = [keep(m) for m in mlp_magnitudes(before, x)]
    train_step(model, optimizer, x)
    check_mlp_update(before, model, grads, [masks[0], np.ones_like(masks[1])])


def test_magnitudes_are_summed_over_replicas(monkeypatch) -> None:
    torch.manual_seed(7)
    x, x_other = torch.randn(8, 8), 2 * torch.randn(8, 8) - 1
    other_model = tiny_mlp(hidden=16)  # the other replica: same weights, its own batch
    other = MIGU().attach(other_model, torch.optim.SGD(other_model.parameters(), lr=LR), seed=0)
    train_step(other_model, other.optimizer, x_other, step=False)

    def fake_all_reduce_sum_(tensors):
        torch._foreach_add_(tensors, other.magnitudes)
    monkeypatch.setattr("lifelong.methods.migu.all_reduce_sum_", fake_all_reduce_sum_)
    model, optimizer, grads, _ = mlp_setup()
    before = [p.detach().clone() for p in model.parameters()]
    masks = [keep(m) for m in mlp_magnitudes(before, x, x_other)]
    assert any((k != keep(m)).any() for k, m in zip(masks, mlp_magnitudes(before, x)))
    train_step(model, optimizer, x)
    check_mlp_update(before, model, grads, masks)


def test_masks_act_on_the_full_gradient_after_ewc() -> None:
    scenario = toy_scenario("task")
    data = scenario.tasks[0].train_data()
    steps = {}
    for spec in ("naive", "ewc", "ewc+migu"):
        model = tiny_mlp(hidden=16)
        optimizer = torch.optim.SGD(model.parameters(), lr=LR)
        method = build_method(spec, {"ewc": {"lambda": 1000.0}} if "ewc" in spec else {})
        method.attach(model, optimizer, scenario.readout, seed=0)
        method.after_task(0, data)
        with torch.no_grad():  # away from the anchor: EWC's gradient is large
            for p in model.parameters():
                p.add_(0.1)
        method.before_task(1)
        before = [p.detach().clone() for p in model.parameters()]
        train_step(model, optimizer, data.x[:8])
        steps[spec] = [b - p.detach() for b, p in zip(before, model.parameters())]
    masks = [torch.from_numpy(keep(m)) for m in mlp_magnitudes(before, data.x[:8])]
    for i, k in enumerate([masks[0], masks[0], masks[1], masks[1]]):
        naive, ewc, both = steps["naive"][i], steps["ewc"][i], steps["ewc+migu"][i]
        assert (ewc[~k] - naive[~k]).abs().max() > 1e-3  # EWC's gradient reaches frozen rows
        assert not both[~k].any()  # ... and MIGU, acting after it, zeroes it there
        torch.testing.assert_close(both[k], ewc[k])


def test_state_dict_round_trip_keeps_pending_magnitudes() -> None:
    torch.manual_seed(8)
    x1, x2 = torch.randn(6, 8), torch.randn(6, 8) + 2
    model, optimizer, grads, method = mlp_setup()
    method.before_task(1)
    train_step(model, optimizer, x1, step=False)  # a micro-batch, before the update
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    twin = tiny_mlp(hidden=16)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=LR)
    twin_grads = capture_grads(twin_opt)
    F.cross_entropy(twin(x1), torch.arange(6) % 4).backward()  # the same pending gradient
    restored = MIGU(mask_first_task=False).attach(twin, twin_opt, seed=1)
    restored.load_state_dict(state)
    assert restored.config.mask_first_task is True and restored.task == 1
    assert restored.needs_task_boundaries is False
    for a, b in zip(restored.magnitudes, method.magnitudes):
        assert torch.equal(a, b) and a.any()

    before = [p.detach().clone() for p in model.parameters()]
    masks = [keep(m) for m in mlp_magnitudes(before, x1, x2)]
    assert any((k != keep(m)).any() for k, m in zip(masks, mlp_magnitudes(before, x2)))
    for net, opt in ((model, optimizer), (twin, twin_opt)):
        F.cross_entropy(net(x2), torch.arange(6) % 4).backward()
        opt.step()
    check_mlp_update(before, model, grads, masks)
    check_mlp_update(before, twin, twin_grads, masks)

    other = tiny_mlp(hidden=5)
    with pytest.raises(ConfigError, match="do not fit"):
        MIGU().attach(other, torch.optim.SGD(other.parameters(), lr=0.1)).load_state_dict(state)


def test_training_in_eval_mode_warns_that_nothing_was_counted() -> None:
    model, optimizer, _, _ = mlp_setup()
    model.eval()
    with pytest.warns(UserWarning, match="no counted forward pass"):
        train_step(model, optimizer, torch.randn(4, 8))


@pytest.mark.parametrize("settings,message", [
    ({"threshold": 1.0}, "threshold: 1.0 is out of range"),
    ({"threshold": -0.1}, "threshold: -0.1 is out of range"),
    ({"threshold": "high"}, "expected a number"),
    ({"mask_first_task": "sometimes"}, "expected true or false"),
    ({"quantile": 0.7}, "unknown key 'quantile'"),
])
def test_bad_settings_are_refused(settings, message) -> None:
    with pytest.raises(ConfigError, match=message):
        MIGU(settings)


def test_models_without_linear_layers_or_optimizer_are_refused() -> None:
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten())
    with pytest.raises(ConfigError, match="none with trainable parameters"):
        MIGU().attach(conv, torch.optim.SGD(conv.parameters(), lr=0.1))
    with pytest.raises(ConfigError, match="needs the optimizer"):
        MIGU().attach(tiny_mlp())
