"""lora, inc-lora, o-lora and lora-replay: what is frozen and trained, the adapters' sum against a
hand-written forward pass, O-LoRA's penalty and gradient against their formulas, checkpoints."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from helpers import tiny_mlp, toy_scenario, train_tasks

from lifelong.core import Batch, build_method, list_methods, parse_method_spec
from lifelong.core.readout import Readout
from lifelong.core.registry import list_aliases
from lifelong.errors import ConfigError
from lifelong.methods import IncLoRA, LoRA, OLoRA
from lifelong.models.hf import build_hf_model
from lifelong.training.checkpoint import RunProgress, load_checkpoint, save_checkpoint
from lifelong.training.loop import train_task


def sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def run(method, model, optimizer, scenario, tasks, generator, epochs=2) -> None:
    train_tasks(method, model, optimizer, scenario, tasks, epochs=epochs, generator=generator)


def linear_shapes(model: torch.nn.Module, skip: str) -> dict[str, tuple[int, int]]:
    """(in, out) of every nn.Linear of an un-adapted model, except `skip`."""
    return {n: (m.in_features, m.out_features) for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and n != skip}


def trainable(model: torch.nn.Module) -> dict[str, int]:
    return {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}


def tokens(n: int = 6, length: int = 10, seed: int = 0) -> torch.Tensor:
    x = torch.randint(4, 260, (n, length), generator=torch.Generator().manual_seed(seed))
    x[:, 7:] = -1  # padding
    return x


# --- (1) what is frozen and what is trained ----------------------------------------------------
@pytest.mark.parametrize("kind", ["mlp", "tiny-bert", "tiny-llama"])
def test_base_is_frozen_and_trainable_count_is_rank_times_in_plus_out(kind: str) -> None:
    r = 4
    if kind == "mlp":
        model, head, lm = tiny_mlp(), "2", False
    else:
        torch.manual_seed(0)
        lm = kind == "tiny-llama"
        model = build_hf_model(kind, 3, generation=lm, vocab_size=260)
        head = "model.lm_head" if lm else "head"
    shapes = linear_shapes(model, skip=head)
    head_size = sum(p.numel() for p in dict(model.named_modules())[head].parameters())
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randn(5, 8) if kind == "mlp" else tokens()
    model.eval()
    with torch.no_grad():
        before = model(x)
    optimizer = sgd(model)
    groups = len(optimizer.param_groups)
    LoRA(r=r).attach(model, optimizer, seed=0)

    expected = sum(r * (i + o) for i, o in shapes.values()) + (0 if lm else head_size)
    assert sum(trainable(model).values()) == expected
    assert all(".lora_" in n or n.startswith(head + ".") for n in trainable(model))
    for name in base:  # every original weight is frozen (peft moves W to `base_layer`)
        adapted = name.rsplit(".", 1)[0] + ".base_layer." + name.rsplit(".", 1)[1]
        params = dict(model.named_parameters())
        found = params[name] if name in params else params[adapted]
        assert torch.equal(found, base[name])
        assert found.requires_grad == (name.startswith(head + ".") and not lm)
    # the adapters are a new optimizer group; B = 0, so the model computes what it did before
    assert len(optimizer.param_groups) == groups + 1
    assert sum(p.numel() for p in optimizer.param_groups[-1]["params"]) == sum(
        r * (i + o) for i, o in shapes.values())
    with torch.no_grad():
        torch.testing.assert_close(model(x), before)


def test_head_option_trains_or_freezes_the_output_layer() -> None:
    torch.manual_seed(0)
    lm = build_hf_model("tiny-llama", 3, generation=True, vocab_size=260)
    LoRA(head="train").attach(lm, sgd(lm), seed=0)
    assert lm.head.weight.requires_grad
    mlp = tiny_mlp()
    LoRA(head="freeze").attach(mlp, sgd(mlp), seed=0)
    assert not any(p.requires_grad for p in mlp[2].parameters())


def test_target_modules_by_last_name_part() -> None:
    torch.manual_seed(0)
    model = build_hf_model("tiny-llama", 3, generation=True, vocab_size=260)
    LoRA(target_modules="q_proj,v_proj").attach(model, sgd(model), seed=0)
    adapted = sorted({n.split(".lora_")[0] for n in trainable(model)})
    assert adapted == [f"model.model.layers.{i}.self_attn.{p}" for i in (0, 1)
                       for p in ("q_proj", "v_proj")]


# --- (2) inc-lora: old adapters frozen, outputs add up -----------------------------------------
def test_inc_lora_keeps_old_adapters_and_sums_all_of_them() -> None:
    scenario = toy_scenario("task", num_classes=6)
    model = tiny_mlp(outputs=scenario.num_outputs)
    optimizer = sgd(model)
    r, alpha = 4, 8.0
    method = IncLoRA(r=r, alpha=alpha).attach(model, optimizer, scenario.readout, seed=0)
    generator = torch.Generator().manual_seed(0)
    run(method, model, optimizer, scenario, [0], generator)
    assert method.num_adapters == 1 and method.adapter_tasks == [0]
    first = {n: p.detach().clone() for n, p in model.named_parameters() if "adapter0" in n}
    head = model[2].weight.detach().clone()
    run(method, model, optimizer, scenario, [1, 2], generator)
    assert method.num_adapters == 3 and method.adapter_tasks == [0, 1, 2]
    params = dict(model.named_parameters())
    for name, value in first.items():  # adapter 0 did not move while tasks 1 and 2 trained
        assert torch.equal(params[name], value) and not params[name].requires_grad
    assert not torch.equal(params["0.lora_B.adapter1.weight"], torch.zeros(16, r))
    assert not torch.equal(model[2].weight, head)  # the classification head keeps learning
    assert [n for n, p in params.items() if p.requires_grad] == [
        "0.lora_A.adapter2.weight", "0.lora_B.adapter2.weight", "2.weight", "2.bias"]

    # h = x W0ᵀ + b0 + Σ_k (α/r) x A_kᵀ B_kᵀ, then ReLU and the head, by hand in float64
    w = {n: p.detach().double().numpy() for n, p in model.state_dict().items()}
    x = torch.randn(7, 8)
    xn = x.double().numpy()
    hidden = xn @ w["0.base_layer.weight"].T + w["0.base_layer.bias"]
    for k in range(3):
        hidden += alpha / r * xn @ w[f"0.lora_A.adapter{k}.weight"].T @ w[
            f"0.lora_B.adapter{k}.weight"].T
    expected = np.maximum(hidden, 0) @ w["2.weight"].T + w["2.bias"]
    model.eval()
    with torch.no_grad():
        np.testing.assert_allclose(model(x).double().numpy(), expected, rtol=1e-5, atol=1e-5)


def test_frozen_adapter_does_not_move_in_a_loop_that_zeroes_gradients_in_place() -> None:
    # zero_grad(set_to_none=False) keeps zero tensors: momentum would still move a frozen adapter
    model = tiny_mlp()
    optimizer = sgd(model)
    method = IncLoRA(r=4, alpha=8).attach(model, optimizer, seed=0)
    x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
    for task in (0, 1):
        method.before_task(task)
        if task == 1:
            old = model[0].lora_B["adapter0"].weight.detach().clone()
        for _ in range(3):
            optimizer.zero_grad(set_to_none=False)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    assert not torch.equal(old, torch.zeros_like(old))
    assert torch.equal(model[0].lora_B["adapter0"].weight, old)


def test_inc_lora_layer_output_in_a_transformer_is_base_plus_every_adapter() -> None:
    torch.manual_seed(0)
    model = build_hf_model("tiny-llama", 3, generation=True, vocab_size=260)
    method = IncLoRA(r=2, alpha=6.0).attach(model, sgd(model), seed=0)
    for t in range(3):
        method.before_task(t)
    layer = model.model.model.layers[0].self_attn.q_proj
    with torch.no_grad():  # give every B a value, else the adapters add nothing
        for k in range(3):
            layer.lora_B[f"adapter{k}"].weight.normal_()
    seen = {}
    handle = layer.register_forward_hook(lambda m, args, out: seen.update(x=args[0], y=out))
    model.eval()
    with torch.no_grad():
        model(tokens())
    handle.remove()
    x = seen["x"].double()
    expected = x @ layer.base_layer.weight.double().T
    for k in range(3):
        a = layer.lora_A[f"adapter{k}"].weight.double()
        b = layer.lora_B[f"adapter{k}"].weight.double()
        expected += 6.0 / 2 * x @ a.T @ b.T
    torch.testing.assert_close(seen["y"].double(), expected, rtol=1e-5, atol=1e-5)


# --- (3) O-LoRA's penalty and its gradient -----------------------------------------------------
@pytest.mark.parametrize("norms", ["paper", "reference"])
def test_o_lora_penalty_matches_the_formula_and_reaches_only_the_new_adapter(norms: str) -> None:
    torch.manual_seed(0)
    model = build_hf_model("tiny-bert", 3, generation=False, vocab_size=260)
    lam1, lam2 = 0.7, 0.3
    method = OLoRA(r=4, lambda_1=lam1, lambda_2=lam2, norms=norms).attach(model, sgd(model),
                                                                          seed=0)
    for t in range(3):
        method.before_task(t)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.normal_()
    state = {n: p.detach().double().numpy() for n, p in model.named_parameters()}
    layers = sorted({n.split(".lora_A.")[0] for n in state if ".lora_A." in n})
    assert len(layers) == 13  # 2 × (q, k, v, attention output, intermediate, output) + pooler
    orth, l2 = 0.0, 0.0
    grad_a = {}
    for layer in layers:
        new = state[f"{layer}.lora_A.adapter2.weight"]
        new_b = state[f"{layer}.lora_B.adapter2.weight"]
        grad = np.zeros_like(new)
        for i in (0, 1):
            old = state[f"{layer}.lora_A.adapter{i}.weight"]
            overlap = old @ new.T
            if norms == "paper":
                orth += (overlap ** 2).sum()
                grad += 2 * lam1 * overlap.T @ old  # ∂/∂A_t Σ (A_i A_tᵀ)²
            else:
                orth += np.abs(overlap).sum()
                grad += lam1 * np.sign(overlap).T @ old
        if norms == "paper":
            l2 += (new ** 2).sum() + (new_b ** 2).sum()
            grad += 2 * lam2 * new
        else:
            l2 += np.linalg.norm(new) + np.linalg.norm(new_b)
            grad += lam2 * new / np.linalg.norm(new)
        grad_a[layer] = grad
    value = method.penalty(Batch(tokens(), torch.zeros(6, dtype=torch.long)), torch.zeros(1))
    np.testing.assert_allclose(value.item(), lam1 * orth + lam2 * l2, rtol=1e-5)

    model.zero_grad(set_to_none=True)
    value.backward()
    for name, p in model.named_parameters():
        if ".lora_A.adapter2." in name:
            np.testing.assert_allclose(p.grad.double().numpy(), grad_a[name.split(".lora_A.")[0]],
                                       rtol=1e-4, atol=1e-6)
        elif ".lora_B.adapter2." in name:
            assert p.grad is not None
        else:  # old adapters, the base and the head get no gradient from the penalty
            assert p.grad is None, name


def test_o_lora_orthogonality_keeps_the_new_subspace_away_from_the_old() -> None:
    def overlap(lambda_1: float) -> float:
        scenario = toy_scenario("task")
        model = tiny_mlp(outputs=scenario.num_outputs)
        optimizer = sgd(model)
        method = OLoRA(r=4, lambda_1=lambda_1).attach(model, optimizer, scenario.readout, seed=0)
        run(method, model, optimizer, scenario, [0, 1], torch.Generator().manual_seed(0),
            epochs=4)
        a0, a1 = (model[0].lora_A[f"adapter{k}"].weight.detach() for k in (0, 1))
        return float((a0 @ a1.T).square().sum())

    assert overlap(1.0) < 0.5 * overlap(0.0)


def test_o_lora_without_penalty_weights_adds_no_penalty() -> None:
    assert not OLoRA(lambda_1=0, lambda_2=0).uses("penalty")
    assert OLoRA().uses("penalty") and not IncLoRA().uses("penalty")


# --- (4) lora-replay ---------------------------------------------------------------------------
def test_lora_replay_is_the_composition_and_both_parts_act() -> None:
    assert parse_method_spec("lora-replay") == ["lora", "replay"]
    assert list_aliases() == {"lora-replay": "lora+replay"}
    assert "lora-replay" not in list_methods()
    with pytest.raises(ConfigError, match="names replay twice"):
        build_method("lora-replay+replay")
    method = build_method("lora-replay", {"replay": {"memory_size": 24},
                                          "lora": {"r": 4, "alpha": 8}})
    lora, replay = method.members
    assert (lora.name, replay.name, lora.config.r) == ("lora", "replay", 4)

    scenario = toy_scenario("class")
    model = tiny_mlp(outputs=scenario.num_outputs)
    optimizer = sgd(model)
    base = model[0].weight.detach().clone()
    method.attach(model, optimizer, scenario.readout, seed=0)
    sizes = []
    model.register_forward_pre_hook(lambda module, args: sizes.append(len(args[0])))
    run(method, model, optimizer, scenario, [0, 1], torch.Generator().manual_seed(0))
    assert len(replay.memory) > 0 and max(sizes) > 8  # replayed samples joined the batches
    assert torch.equal(model[0].base_layer.weight, base)  # LoRA: the base stayed frozen
    assert model[0].lora_B["adapter0"].weight.abs().sum() > 0  # and its adapter learned


# --- (5) state and checkpoints -----------------------------------------------------------------
@pytest.mark.parametrize("name", ["lora", "inc-lora", "o-lora"])
def test_checkpoint_resume_continues_identically(name: str, tmp_path) -> None:
    # dropout: the checkpoint restores torch's generator, so it resumes exactly as well
    settings = {"r": 4, "alpha": 8, "dropout": 0.2}
    scenario = toy_scenario("class", num_classes=6)

    def fresh(seed: int):
        model = tiny_mlp(outputs=scenario.num_outputs, seed=seed)
        optimizer = sgd(model)
        method = build_method(name, {name: settings})
        method.attach(model, optimizer, scenario.readout, seed=seed)
        return model, optimizer, method

    model, optimizer, method = fresh(0)
    shuffle = torch.Generator().manual_seed(0)
    run(method, model, optimizer, scenario, [0, 1], shuffle)
    save_checkpoint(tmp_path, model=model, optimizer=optimizer, method=method,
                    readout=scenario.readout, shuffle=shuffle, progress=RunProgress(next_task=2))
    x = scenario.tasks[0].test_data().x
    model.eval()
    with torch.no_grad():
        saved_output = model(x)
    run(method, model, optimizer, scenario, [2], shuffle)

    # a resumed run: fresh model and optimizer, attach, then model, optimizer, method states
    model2, optimizer2, method2 = fresh(5)
    shuffle2 = torch.Generator()
    load_checkpoint(tmp_path, model=model2, optimizer=optimizer2, method=method2,
                    readout=scenario.readout, shuffle=shuffle2)
    expected = {"lora": 1, "inc-lora": 2, "o-lora": 2}[name]
    assert method2.num_adapters == expected and len(optimizer2.param_groups) == 1 + expected
    model2.eval()
    with torch.no_grad():
        torch.testing.assert_close(model2(x), saved_output, rtol=0, atol=0)
    run(method2, model2, optimizer2, scenario, [2], shuffle2)
    assert method2.num_adapters == method.num_adapters
    for (n, a), (n2, b) in zip(model.named_parameters(), model2.named_parameters()):
        assert n == n2
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_killed_run_resumes_to_the_same_accuracy_matrix(tmp_path, monkeypatch) -> None:
    import lifelong.training.lifecycle as lifecycle
    from lifelong.runs.config import RunConfig
    from lifelong.runs.experiment import resume_experiment, run_experiment

    config = RunConfig.from_dict({
        "benchmark": "split-digits", "iterations": 10, "batch_size": 32, "device": "cpu",
        "method": "o-lora", "method_params": {"o-lora": {"dropout": 0.1, "lambda_2": 0.01}}})
    whole = run_experiment(config, tmp_path / "whole", progress=False)
    real, calls = lifecycle.train_task, []

    def killed_in_task_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            real(*args, **{**kwargs, "iterations": 4})
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(lifecycle, "train_task", killed_in_task_2)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(config, tmp_path / "killed", progress=False)
    resumed = resume_experiment(tmp_path / "killed", progress=False)
    assert resumed.accuracy_matrix == whole.accuracy_matrix


def test_method_state_loads_before_the_model_too_and_through_weights_only() -> None:
    torch.manual_seed(0)
    model = build_hf_model("tiny-bert", 2, generation=False, vocab_size=260)
    optimizer = sgd(model)
    method = IncLoRA(r=2).attach(model, optimizer, seed=0)
    data = Batch(tokens(8), torch.randint(0, 2, (8,), generator=torch.Generator().manual_seed(1)))
    for t in (0, 1):
        method.before_task(t)
        train_task(model, optimizer, method, Readout.identity(), data, batch_size=4, epochs=1)
    buffer = io.BytesIO()
    torch.save({"method": method.state_dict(), "model": model.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert len(saved["method"]["adapters"]) == 2 and saved["method"]["adapter_tasks"] == [0, 1]

    torch.manual_seed(1)
    model2 = build_hf_model("tiny-bert", 2, generation=False, vocab_size=260)
    method2 = IncLoRA(r=2).attach(model2, sgd(model2), seed=3)
    method2.load_state_dict(saved["method"])  # adds the second adapter ...
    model2.load_state_dict(saved["model"])  # ... so the model's state fits
    model.eval(), model2.eval()
    with torch.no_grad():
        torch.testing.assert_close(model2(data.x), model(data.x), rtol=0, atol=0)
    assert [n for n, p in model2.named_parameters() if p.requires_grad] == [
        n for n, p in model.named_parameters() if p.requires_grad]


def test_detach_leaves_trained_adapters_and_no_hook_and_copies_work() -> None:
    model = tiny_mlp()
    method = IncLoRA(r=4).attach(model, sgd(model), seed=0)
    assert len(model._load_state_dict_pre_hooks) == 1
    teacher = copy.deepcopy(model)  # e.g. LwF's frozen teacher: the method is not copied
    assert teacher[0].lora_A["adapter0"].weight is not model[0].lora_A["adapter0"].weight
    method.detach()
    assert len(model._load_state_dict_pre_hooks) == 0 and "adapter0" in model[0].lora_A


# --- (6) configuration errors ------------------------------------------------------------------
@pytest.mark.parametrize("settings, message", [
    ({"r": 0}, r"lora.r: 0 is out of range; accepted: >= 1"),
    ({"r": 2.5}, r"lora.r: expected an integer"),
    ({"alpha": 0}, r"lora.alpha: 0.0 is out of range"),
    ({"dropout": 1.0}, r"lora.dropout: 1.0 is out of range"),
    ({"head": "keep"}, r"choose one of auto, train, freeze"),
])
def test_bad_settings_are_refused(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LoRA(**settings)


def test_bad_targets_and_ranks_are_refused_at_attach_with_what_exists() -> None:
    model = tiny_mlp()  # Linear 8→16 ("0"), ReLU, head 16→4 ("2")
    with pytest.raises(ConfigError, match="no Linear layer is named 'query'; the model's Linear "
                                          "layers are: 0$"):
        LoRA(target_modules=["query"]).attach(model, sgd(model))
    with pytest.raises(ConfigError, match="'2' is the output layer"):
        LoRA(target_modules=["2"]).attach(model, sgd(model))
    with pytest.raises(ConfigError, match=r"rank 9 exceeds min\(in, out\) = 8 of layer '0'"):
        LoRA(r=9).attach(model, sgd(model))
    with pytest.raises(ConfigError, match="adds its adapters to the optimizer"):
        LoRA().attach(model)
    torch.manual_seed(0)
    bert = build_hf_model("tiny-bert", 2, generation=False, vocab_size=260)
    with pytest.raises(ConfigError, match=r"named 'q_proj'.*body\.encoder\.layer\.0\.attention"
                                          r"\.self\.query, "):
        LoRA(target_modules="q_proj").attach(bert, sgd(bert))
    with pytest.raises(ConfigError, match="norms"):
        OLoRA(norms="frobenius")


def test_mismatched_state_and_adapted_models_are_refused() -> None:
    model = tiny_mlp()
    state = LoRA(r=4).attach(model, sgd(model), seed=0).state_dict()
    with pytest.raises(ConfigError, match="already holds peft adapters"):
        LoRA(r=4).attach(model, sgd(model))
    other = tiny_mlp()
    method = LoRA(r=2).attach(other, sgd(other), seed=0)
    with pytest.raises(ConfigError, match="saved with r=4, this method was attached with 2"):
        method.load_state_dict(state)
