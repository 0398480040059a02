"""DAS against independent computations on tiny transformers.

A gate m on a unit's output is a rescaling of weights the unit feeds, so ∂L/∂m comes out of plain
parameter gradients without any hook: for a head, Σ W∘∇W over the attention output projection's
columns that read it; for an intermediate neuron, over its column of the down-projection; for an
output unit, over its row of the down-projection plus b∘∇b. Likewise the importance-masked view
of the contrastive loss is a copy of the model with those weights scaled by the importance.
"""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_mlp

pytest.importorskip("transformers")
import transformers  # noqa: E402

from lifelong.core import Batch  # noqa: E402
from lifelong.errors import ConfigError  # noqa: E402
from lifelong.functional.units import find_units  # noqa: E402
from lifelong.methods import DAS  # noqa: E402
from lifelong.models.hf import HFClassifier, build_hf_model, unpack_ids  # noqa: E402

HIDDEN, HEADS, INTER = 32, 4, 64
HEAD_DIM = HIDDEN // HEADS


def bert(dropout: float, seed: int = 0, heads: int = HEADS) -> HFClassifier:
    """A 2-layer BERT classifier with 4 heads (with 2 heads every head's z-score is ±1/√2)."""
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=260, hidden_size=HIDDEN, num_hidden_layers=2,
                                     num_attention_heads=heads, intermediate_size=INTER,
                                     hidden_dropout_prob=dropout,
                                     attention_probs_dropout_prob=dropout, pad_token_id=0)
    return HFClassifier(transformers.AutoModel.from_config(config), 3)


def token_batch(n: int = 8, seed: int = 0, outputs: int = 3) -> Batch:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(4, 260, (n, 10), generator=g)
    x[: n // 2, 7:] = -1  # padding
    return Batch(x, torch.randint(0, outputs, (n,), generator=g))


def pooled_by_hand(model: HFClassifier, x: torch.Tensor) -> torch.Tensor:
    """Masked mean of the last hidden states; columns that are padding in every row are dropped
    first, as the classifier does (the dropout masks then have the same shapes)."""
    x = x[:, :int((x >= 0).any(0).nonzero().max()) + 1]
    ids, mask = unpack_ids(x)
    hidden = model.body(input_ids=ids, attention_mask=mask).last_hidden_state
    w = mask.unsqueeze(-1).float()
    return (hidden * w).sum(1) / w.sum(1)


def gate_grads_from_weights(model: HFClassifier, loss: torch.Tensor) -> list[np.ndarray]:
    """Per layer: ∂L/∂m for heads, intermediate and output units, from weight gradients."""
    layers = model.body.encoder.layer
    tensors = []
    for layer in layers:
        tensors += [layer.attention.output.dense.weight, layer.output.dense.weight,
                    layer.output.dense.bias]
    grads = torch.autograd.grad(loss, tensors)
    result = []
    for i in range(len(layers)):
        (o, down, bias), (g_o, g_down, g_bias) = tensors[3 * i:3 * i + 3], grads[3 * i:3 * i + 3]
        heads = (o * g_o).view(HIDDEN, -1, HEAD_DIM).sum((0, 2))
        inter = (down * g_down).sum(0)
        out = (down * g_down).sum(1) + bias * g_bias
        result += [t.detach().double().numpy() for t in (heads, inter, out)]
    return result


def normalise(g: np.ndarray) -> np.ndarray:
    a = np.abs(g)
    return np.abs(np.tanh((a - a.mean()) / a.std(ddof=1)))


def task_loss(model: HFClassifier, batch: Batch) -> torch.Tensor:
    return F.cross_entropy(model(batch.x), batch.y)


def proxy_kl(model: HFClassifier, batch: Batch) -> torch.Tensor:
    log_p = F.log_softmax(pooled_by_hand(model, batch.x), -1)
    log_q = F.log_softmax(pooled_by_hand(model, batch.x), -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def expected_sums(model, batches, loss_fn) -> list[np.ndarray]:
    """Σ over batches of each batch's own ∂L/∂m (no accumulation across batches)."""
    total = None
    for batch in batches:
        found = gate_grads_from_weights(model, loss_fn(model, batch))
        total = found if total is None else [a + b for a, b in zip(total, found)]
    return total


def attach(model, lr: float = 0.1, **config) -> tuple[DAS, torch.optim.Optimizer]:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return DAS(config).attach(model, optimizer, seed=0), optimizer


def module_hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# --- importance ------------------------------------------------------------------------------
def test_task_loss_importance_matches_weight_gradient_contractions_over_two_batches() -> None:
    model = bert(dropout=0.0)
    data = token_batch(8)
    method, _ = attach(model, general="none", importance_batch_size=4)
    sums, _ = method.gate_gradient_sums(data, method.task_loss)
    halves = [data.select(slice(0, 4)), data.select(slice(4, 8))]
    want = expected_sums(model, halves, task_loss)
    for got, expected in zip(sums, want):  # raw sums: no gradient leaks from batch 1 into 2
        np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-4, atol=1e-7)
    # an implementation summing cumulative .grad (the reference code) would give g1 + (g1 + g2)
    first = expected_sums(model, halves[:1], task_loss)
    assert not np.allclose(np.concatenate(want) + np.concatenate(first), np.concatenate(want))

    method.after_task(0, data)
    assert module_hooks(model) == 0  # the gates exist only while the importance is computed
    kinds = [g.kind for g in method.groups]
    assert kinds == ["head", "intermediate", "output"] * 2
    for got, expected in zip(method.importance, want):
        np.testing.assert_allclose(got.double().numpy(), normalise(expected), rtol=1e-4,
                                   atol=1e-6)


def test_first_domain_proxy_kl_with_dropout_on() -> None:
    model = bert(dropout=0.1)
    data = token_batch(8, seed=1)
    method, _ = attach(model, importance_batch_size=4)
    model.eval()  # the importance pass must switch dropout on by itself, then restore eval
    torch.manual_seed(123)
    method.before_task(0)
    method.training_data(0, data)
    assert not model.training and method.general_done
    model.train()
    torch.manual_seed(123)  # the same dropout masks, in the same order
    halves = [data.select(slice(0, 4)), data.select(slice(4, 8))]
    want = expected_sums(model, halves, proxy_kl)
    assert all(np.abs(w).max() > 0 for w in want)
    for got, expected in zip(method.importance, want):
        np.testing.assert_allclose(got.double().numpy(), normalise(expected), rtol=1e-4,
                                   atol=1e-6)
    assert all(len(torch.unique(a)) == len(a) for a in method.importance)  # not noise-flat


def test_proxy_kl_without_dropout_is_refused() -> None:
    model = bert(dropout=0.0)
    method, optimizer = attach(model)
    with pytest.raises(ConfigError, match="no active dropout"):
        method.training_data(0, token_batch())
    # and a loop that skips training_data is stopped at its first step, before any update
    loss = task_loss(model, token_batch())
    loss.backward()
    with pytest.raises(ConfigError, match="training_data"):
        optimizer.step()


def test_importance_accumulates_by_elementwise_max() -> None:
    model = bert(dropout=0.0)
    method, _ = attach(model, general="none")
    first, second = token_batch(8, seed=2), token_batch(8, seed=3)
    method.after_task(0, first)
    a0 = [normalise(g) for g in expected_sums(model, [first], task_loss)]
    with torch.no_grad():  # "training" on task 1 moves the weights
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    method.after_task(1, second)
    a1 = [normalise(g) for g in expected_sums(model, [second], task_loss)]
    for got, x, y in zip(method.importance, a0, a1):
        np.testing.assert_allclose(got.double().numpy(), np.maximum(x, y), rtol=1e-4, atol=1e-6)
    assert any((x > y).any() and (y > x).any() for x, y in zip(a0, a1))  # max takes from both


# --- gradient masking ------------------------------------------------------------------------
def random_importance(method: DAS, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    method.importance = [torch.rand(group.size, generator=g) for group in method.groups]
    method.general_done = True


def step_with_random_grads(model, optimizer, seed: int = 1) -> tuple[dict, dict]:
    """One SGD step on fixed random gradients: (gradients, parameter changes / lr) by name."""
    g = torch.Generator().manual_seed(seed)
    named = dict(model.named_parameters())
    grads = {n: torch.randn(p.shape, generator=g) for n, p in named.items()}
    before = {n: p.detach().clone() for n, p in named.items()}
    for n, p in named.items():
        p.grad = grads[n].clone()
    optimizer.step()
    lr = optimizer.param_groups[0]["lr"]
    return grads, {n: (before[n] - p.detach()) / lr for n, p in named.items()}


def test_gradients_of_unit_parameters_are_scaled_by_one_minus_importance() -> None:
    model = bert(dropout=0.0)
    method, optimizer = attach(model, lr=0.5, general="none")
    random_importance(method)
    heads, inter, out = (1 - a for a in method.importance[:3])  # layer 0
    grads, used = step_with_random_grads(model, optimizer)
    pre = "body.encoder.layer.0."
    rows = heads.repeat_interleave(HEAD_DIM)  # q/k/v row r computes head r // head_dim
    for name in ("query", "key", "value"):
        w, b = f"{pre}attention.self.{name}.weight", f"{pre}attention.self.{name}.bias"
        torch.testing.assert_close(used[w], grads[w] * rows[:, None])
        torch.testing.assert_close(used[b], grads[b] * rows)
        h = 2  # spelled out for one head: its 8 rows, nothing else
        torch.testing.assert_close(used[w][h * HEAD_DIM:(h + 1) * HEAD_DIM],
                                   grads[w][h * HEAD_DIM:(h + 1) * HEAD_DIM] * heads[h])
    o = f"{pre}attention.output.dense.weight"
    torch.testing.assert_close(used[o], grads[o] * rows[None, :])  # columns read from the head
    wrong = grads[o] * rows[:, None]  # the reference's input-dimension masking of q/k/v
    q = f"{pre}attention.self.query.weight"
    assert not torch.allclose(used[q], grads[q] * rows[None, :], atol=1e-4)
    assert not torch.allclose(used[o], wrong, atol=1e-4)
    up, down = f"{pre}intermediate.dense", f"{pre}output.dense"
    torch.testing.assert_close(used[f"{up}.weight"], grads[f"{up}.weight"] * inter[:, None])
    torch.testing.assert_close(used[f"{up}.bias"], grads[f"{up}.bias"] * inter)
    i, j = 5, 7  # one intermediate neuron's column, one output unit's row
    torch.testing.assert_close(used[f"{down}.weight"][:, i],
                               grads[f"{down}.weight"][:, i] * inter[i] * out)
    torch.testing.assert_close(used[f"{down}.weight"][j],
                               grads[f"{down}.weight"][j] * out[j] * inter)
    torch.testing.assert_close(used[f"{down}.bias"], grads[f"{down}.bias"] * out)
    untouched = ["body.embeddings.word_embeddings.weight", "body.embeddings.LayerNorm.weight",
                 f"{pre}attention.output.dense.bias", f"{pre}attention.output.LayerNorm.weight",
                 f"{pre}output.LayerNorm.bias", "head.weight", "head.bias"]
    for name in untouched:
        torch.testing.assert_close(used[name], grads[name])


@pytest.mark.parametrize("family", ["tiny-bert", "tiny-gpt2", "tiny-llama"])
def test_three_families_end_to_end(family: str) -> None:
    torch.manual_seed(0)
    generation = family != "tiny-bert"
    model = build_hf_model(family, 3, generation=generation, vocab_size=260, dropout=0.1)
    data = token_batch(8, seed=4)
    if generation:  # next-token targets, ignored at padding
        data = Batch(data.x, torch.where(data.x >= 0, data.x.roll(-1, 1).clamp(min=0), -100))
    method, optimizer = attach(model, importance_batch_size=4)
    method.before_task(0)
    method.training_data(0, data)  # proxy KL, dropout on
    loss = data.loss(model(data.x))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    method.after_task(0, data)  # the task's own loss (causal LM for the decoders)
    assert [len(a) for a in method.importance] == [2, 64, 32] * 2
    assert all(bool(((a >= 0) & (a <= 1)).all()) for a in method.importance)
    assert all(len(torch.unique(a)) > 1 for a in method.importance[1:3])
    heads, inter, out = (1 - a for a in method.importance[:3])
    rows = heads.repeat_interleave(16)
    grads, used = step_with_random_grads(model, optimizer)
    if family == "tiny-gpt2":  # Conv1D: weight [in, out]
        pre = "model.transformer.h.0."
        qkv = f"{pre}attn.c_attn"
        torch.testing.assert_close(used[f"{qkv}.weight"], grads[f"{qkv}.weight"] * rows.repeat(3))
        torch.testing.assert_close(used[f"{qkv}.bias"], grads[f"{qkv}.bias"] * rows.repeat(3))
        o = f"{pre}attn.c_proj.weight"
        torch.testing.assert_close(used[o], grads[o] * rows[:, None])
        fc, proj = f"{pre}mlp.c_fc", f"{pre}mlp.c_proj"
        torch.testing.assert_close(used[f"{fc}.weight"], grads[f"{fc}.weight"] * inter)
        torch.testing.assert_close(used[f"{fc}.bias"], grads[f"{fc}.bias"] * inter)
        torch.testing.assert_close(used[f"{proj}.weight"],
                                   grads[f"{proj}.weight"] * inter[:, None] * out)
        torch.testing.assert_close(used[f"{proj}.bias"], grads[f"{proj}.bias"] * out)
        untouched = [f"{pre}attn.c_proj.bias", f"{pre}ln_1.weight", "model.transformer.wte.weight"]
    elif family == "tiny-llama":
        pre = "model.model.layers.0."
        for name in ("q_proj", "k_proj", "v_proj"):
            w = f"{pre}self_attn.{name}.weight"
            torch.testing.assert_close(used[w], grads[w] * rows[:, None])
        o = f"{pre}self_attn.o_proj.weight"
        torch.testing.assert_close(used[o], grads[o] * rows)
        for name in ("gate_proj", "up_proj"):
            w = f"{pre}mlp.{name}.weight"
            torch.testing.assert_close(used[w], grads[w] * inter[:, None])
        w = f"{pre}mlp.down_proj.weight"
        torch.testing.assert_close(used[w], grads[w] * out[:, None] * inter)
        untouched = [f"{pre}input_layernorm.weight", "model.lm_head.weight"]
    else:
        pre = "body.encoder.layer.0."
        w = f"{pre}attention.self.value.weight"
        torch.testing.assert_close(used[w], grads[w] * rows[:, None])
        untouched = ["head.weight", f"{pre}output.LayerNorm.weight"]
    for name in untouched:
        torch.testing.assert_close(used[name], grads[name])


def test_grouped_query_attention_kv_heads_take_the_max_of_their_query_heads() -> None:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=260, hidden_size=32, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2,
                                      intermediate_size=64, pad_token_id=0)
    body = transformers.AutoModelForCausalLM.from_config(config)
    from lifelong.models.hf import HFCausalLM

    model = HFCausalLM(body)
    method, optimizer = attach(model, general="none")
    random_importance(method, seed=3)
    a = method.importance[0]
    grads, used = step_with_random_grads(model, optimizer)
    kv = (1 - torch.stack([a[0:2].max(), a[2:4].max()])).repeat_interleave(8)
    for name in ("k_proj", "v_proj"):
        w = f"model.model.layers.0.self_attn.{name}.weight"
        torch.testing.assert_close(used[w], grads[w] * kv[:, None])
    q = "model.model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(used[q], grads[q] * (1 - a).repeat_interleave(8)[:, None])


# --- contrastive loss ------------------------------------------------------------------------
def info_nce_by_hand(anchor: np.ndarray, positive: np.ndarray, negatives=None) -> float:
    unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    logits = unit(anchor) @ unit(positive).T
    if negatives is not None:
        logits = np.concatenate([logits, unit(anchor) @ unit(negatives).T], 1)
    logits = logits / 0.05
    logits -= logits.max(1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return -float(np.mean(np.diag(log_p[:, :len(anchor)])))


def masked_copy(model: HFClassifier, importance: list[torch.Tensor]) -> HFClassifier:
    """The importance-masked network as scaled weights: head outputs, intermediate and output
    units multiplied by their importance."""
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for i, layer in enumerate(twin.body.encoder.layer):
            heads, inter, out = importance[3 * i:3 * i + 3]
            layer.attention.output.dense.weight.mul_(heads.repeat_interleave(HEAD_DIM))
            layer.output.dense.weight.mul_(inter).mul_(out[:, None])
            layer.output.dense.bias.mul_(out)
    return twin


def test_contrastive_loss_is_infonce_with_the_masked_view_as_negatives() -> None:
    model = bert(dropout=0.0)  # deterministic views, so the expected value is exact
    method, _ = attach(model, general="none", contrastive=0.5)
    random_importance(method, seed=5)
    data = token_batch(6, seed=6)
    output = model(data.x)  # the training pass: its representation is the first view
    term = method.penalty(data, output)
    with torch.no_grad():
        z = pooled_by_hand(model, data.x).double().numpy()
        z3 = pooled_by_hand(masked_copy(model, method.importance), data.x).double().numpy()
    expected = 0.5 * info_nce_by_hand(z, z, z3)
    np.testing.assert_allclose(float(term.detach()), expected, rtol=1e-4)
    term.backward()  # the loss trains the network
    assert model.body.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    assert module_hooks(model) == 2  # only the two capture hooks remain while attached
    method.detach()
    assert module_hooks(model) == 0


def test_contrastive_views_are_two_dropout_passes_and_no_negatives_before_any_importance(
        ) -> None:
    model = bert(dropout=0.1)
    method, _ = attach(model, general="none", contrastive=1.0)
    data = token_batch(6, seed=7)
    torch.manual_seed(11)
    term = method.penalty(data, model(data.x))  # task 0: no importance yet, plain SimCSE
    torch.manual_seed(11)  # the same two passes by hand: the training pass, then one more
    with torch.no_grad():
        first = pooled_by_hand(model, data.x).double().numpy()
        second = pooled_by_hand(model, data.x).double().numpy()
    assert np.abs(first - second).max() > 1e-3  # dropout: two different views
    np.testing.assert_allclose(float(term.detach()), info_nce_by_hand(second, first), rtol=1e-4)
    assert not DAS(general="none").uses("penalty")  # off by default: no extra passes


# --- state and errors ------------------------------------------------------------------------
def test_state_dict_round_trip() -> None:
    model = bert(dropout=0.0)
    method, _ = attach(model, general="none")
    method.after_task(0, token_batch())
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    twin = bert(dropout=0.0, seed=1)
    restored, optimizer = attach(twin, general="none")
    restored.load_state_dict(state)
    for a, b in zip(restored.importance, method.importance):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    grads, used = step_with_random_grads(twin, optimizer)
    w = "body.encoder.layer.1.intermediate.dense.weight"
    torch.testing.assert_close(used[w], grads[w] * (1 - method.importance[4])[:, None])
    other, _ = attach(bert(dropout=0.0, heads=2), general="none")
    with pytest.raises(ConfigError, match="different model"):
        other.load_state_dict(state)


def test_config_errors() -> None:
    mlp = tiny_mlp()
    with pytest.raises(ConfigError, match="no transformer units"):
        DAS().attach(mlp, torch.optim.SGD(mlp.parameters(), 0.1))
    with pytest.raises(ConfigError, match="temperature"):
        DAS(temperature=0)
    with pytest.raises(ConfigError, match="general"):
        DAS(general="kl")
    with pytest.raises(ConfigError, match="contrastive"):
        DAS(contrastive=-1)
    model = bert(dropout=0.0)
    for name, p in model.named_parameters():
        p.requires_grad_("embeddings" in name or name.startswith("head"))
    with pytest.raises(ConfigError, match="none of them is trainable"):
        DAS().attach(model, torch.optim.SGD([p for p in model.parameters() if p.requires_grad],
                                            0.1))
    units = find_units(bert(dropout=0.0))
    assert [g.size for g in units] == [HEADS, INTER, HIDDEN] * 2


def test_add_penalty_leaves_the_loss_alone_without_the_contrastive_loss() -> None:
    """A user's loop calls method.add_penalty on every step; DAS without its contrastive loss has
    no penalty, so the loss must come back unchanged (it used to run the contrastive passes)."""
    torch.manual_seed(0)
    model = build_hf_model("tiny-bert", 3, format="classify", vocab_size=261)
    method = DAS().attach(model, torch.optim.SGD(model.parameters(), lr=0.1))
    x = torch.randint(5, 261, (4, 10))
    batch = Batch(x, torch.randint(0, 3, (4,)))
    output = model(x)
    loss = batch.loss(output)
    assert method.add_penalty(loss, batch, output) is loss
