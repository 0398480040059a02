"""A lifelong method inside a Hugging Face Trainer trains exactly as lifelong's own loop."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from tiny_hf import (
    LENGTH,
    CountingMethod,
    collate,
    lifelong_loop,
    method,
    tiny_bert,
    tiny_gpt2,
    token_rows,
    training_args,
    transformers,
)

from lifelong.core import Composite, build_method
from lifelong.errors import ConfigError
from lifelong.integrations import require
from lifelong.integrations.hf import attach, to_batch
from lifelong.methods import EWC


def trainer_for(model, rows, tmp_path, method_, task, **overrides):
    trainer = transformers.Trainer(model=model, args=training_args(tmp_path, **overrides),
                                   train_dataset=rows, data_collator=collate)
    attach(trainer, method_, task=task, seed=0)
    return trainer


def record_losses(trainer, losses: list) -> None:
    """Keep every loss the integration hands to the Trainer."""
    inner = trainer.compute_loss

    def compute_loss(*args, **kwargs):
        loss = inner(*args, **kwargs)
        losses.append(loss.detach().clone())
        return loss

    trainer.compute_loss = compute_loss


def train_tasks(model, method_, tasks, tmp_path, **overrides) -> list[torch.Tensor]:
    losses: list[torch.Tensor] = []
    for task, rows in enumerate(tasks):
        trainer = trainer_for(model, rows, tmp_path, method_, task, **overrides)
        record_losses(trainer, losses)
        trainer.train()
    return losses


def max_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("spec", ["ewc", "replay", "lwf"])
def test_trainer_gives_the_losses_and_weights_of_lifelongs_loop(spec: str, tmp_path) -> None:
    tasks = [token_rows(0), token_rows(1)]
    model, reference, naive = tiny_bert(), tiny_bert(), tiny_bert()
    losses = train_tasks(model, method(spec), tasks, tmp_path)
    expected = lifelong_loop(reference, method(spec), tasks)
    torch.testing.assert_close(torch.stack(losses), torch.stack(expected))
    for got, want in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(got, want)
    lifelong_loop(naive, build_method("naive"), tasks)
    assert max_difference(model, naive) > 1e-3  # the method changed training


def test_gradient_accumulation_transforms_once_per_update_and_matches_a_double_batch(
        tmp_path) -> None:
    tasks = [token_rows(0), token_rows(1)]
    weights = {}
    for accumulation in (1, 2):
        model, counter = tiny_bert(), CountingMethod()
        composite = Composite([EWC({"lambda": 100.0}), counter])
        trainer_for(model, tasks[0], tmp_path, composite, 0).train()
        trainer = trainer_for(model, tasks[1], tmp_path, composite, 1,
                              per_device_train_batch_size=4 // accumulation,
                              gradient_accumulation_steps=accumulation)
        trainer.train()
        assert trainer.state.global_step == 2
        assert len(counter.grad_norms) == 4  # 2 updates per task, whatever the micro-batches
        weights[accumulation] = model
    for one, two in zip(weights[1].parameters(), weights[2].parameters()):
        torch.testing.assert_close(one, two)


def fisher_distance(ewc: EWC, model: torch.nn.Module) -> float:
    named = dict(model.named_parameters())
    return sum(float((p * (named[n.removeprefix("model.")] - m).square()).sum().detach())
               for n, p, m in zip(ewc.param_names, ewc.precision, ewc.anchor))


def test_bf16_on_cpu_runs_and_ewc_holds_the_weights(tmp_path) -> None:
    model = tiny_bert()
    ewc = EWC({"lambda": 100.0})
    trainer_for(model, token_rows(0), tmp_path, ewc, 0, bf16=True).train()
    distances = {}
    for spec in ("ewc", "naive"):
        follower = copy.deepcopy(model)
        learner = copy.deepcopy(ewc) if spec == "ewc" else build_method("naive")
        counter = CountingMethod()
        trainer = trainer_for(follower, token_rows(1), tmp_path, Composite([learner, counter]),
                              1, bf16=True)
        trainer.train()
        assert trainer.accelerator.mixed_precision == "bf16"
        assert len(counter.grad_norms) == trainer.state.global_step == 2
        distances[spec] = fisher_distance(ewc, follower)
    assert distances["ewc"] < 0.5 * distances["naive"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 mixed precision needs CUDA")
def test_fp16_transforms_unscaled_gradients_only_on_steps_it_takes(tmp_path) -> None:
    skipped = []

    class Skips(transformers.TrainerCallback):
        def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
            skipped.append(optimizer.step_was_skipped)

    counter = CountingMethod()
    trainer = transformers.Trainer(
        model=tiny_bert(), args=training_args(tmp_path, use_cpu=False, fp16=True),
        train_dataset=token_rows(0, count=32), data_collator=collate, callbacks=[Skips()])
    attach(trainer, counter, task=0)
    trainer.train()
    assert len(counter.grad_norms) == skipped.count(False) and skipped.count(False) > 0
    # scaled gradients would be ~65536 times larger
    assert all(0 < norm < 100 for norm in counter.grad_norms)


def test_lora_model_regularises_only_the_trainable_lora_parameters(tmp_path) -> None:
    peft = pytest.importorskip("peft", reason="the hf extra is not installed")
    model = peft.get_peft_model(tiny_bert(), peft.LoraConfig(
        task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"]))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    ewc = EWC({"lambda": 100.0})
    train_tasks(model, ewc, [token_rows(0), token_rows(1)], tmp_path)
    names = [n.removeprefix("model.") for n in ewc.param_names]
    assert sorted(names) == sorted(trainable)
    assert all("lora_" in n or "modules_to_save" in n for n in names)
    assert any("lora_" in n for n in names)
    assert all(p.shape == trainable[n].shape for n, p in zip(names, ewc.precision))
    assert sum(float(p.sum()) for p in ewc.precision) > 0
    for name, parameter in model.named_parameters():
        if name in frozen:
            assert torch.equal(parameter, frozen[name]), name
    assert any(not torch.equal(p, trainable[n]) for n, p in model.named_parameters()
               if n in trainable)


def test_causal_lm_loss_is_the_models_own_loss_plus_the_distillation_penalty(tmp_path) -> None:
    alpha, temperature = 2.0, 2.0
    model = tiny_gpt2()
    lwf = build_method("lwf", {"lwf": {"alpha": alpha, "temperature": temperature}})
    trainer_for(model, token_rows(0, causal=True), tmp_path, lwf, 0).train()
    teacher = copy.deepcopy(model).eval()
    trainer = trainer_for(model, token_rows(1, causal=True), tmp_path, lwf, 1)
    inner, checked = trainer.compute_loss, []

    def compute_loss(model_, inputs, **kwargs):
        with torch.no_grad():  # written out: HF's own loss, and T²·α·KL(teacher || student)
            student = model_(**inputs)
            old = teacher(input_ids=inputs["input_ids"],
                          attention_mask=inputs["attention_mask"]).logits
            log_p_old = F.log_softmax(old / temperature, -1)
            log_p_new = F.log_softmax(student.logits / temperature, -1)
            kl = (log_p_old.exp() * (log_p_old - log_p_new)).sum(-1).mean()
            expected = student.loss + alpha * temperature**2 * kl
        loss = inner(model_, inputs, **kwargs)
        torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)  # summation order
        checked.append(float(kl))
        return loss

    trainer.compute_loss = compute_loss
    trainer.train()
    assert len(checked) == 2 and all(kl > 0 for kl in checked[1:])


def test_causal_labels_are_shifted_to_the_position_they_are_predicted_at() -> None:
    inputs = {"input_ids": torch.tensor([[5, 6, 7, 0]]), "attention_mask": torch.tensor(
        [[1, 1, 1, 0]]), "labels": torch.tensor([[5, 6, 7, -100]])}
    batch = to_batch(inputs, task=3, causal_lm=True, pad_to=6)
    assert batch.x.tolist() == [[5, 6, 7, -1, -1, -1]]
    assert batch.y.tolist() == [[6, 7, -100, -100, -100, -100]]
    assert batch.task_ids.tolist() == [3]
    plain = to_batch(inputs | {"labels": torch.tensor([2])}, task=0)
    assert plain.x.tolist() == [[5, 6, 7, -1]] and plain.y.tolist() == [2]


def test_replay_refuses_batches_of_different_lengths(tmp_path) -> None:
    rows = token_rows(0)
    shorter = [{k: (v[:LENGTH - 2] if v.dim() else v) for k, v in row.items()} for row in rows]
    trainer = trainer_for(tiny_bert(), rows[:4] + shorter[4:], tmp_path, method("replay"), 0)
    with pytest.raises(ConfigError, match="same length.*pad_to"):
        trainer.train()


def test_wrong_use_is_refused_before_training(tmp_path) -> None:
    trainer = trainer_for(tiny_bert(), token_rows(0), tmp_path, method("ewc"), 0)
    with pytest.raises(ConfigError, match="already has a lifelong method"):
        attach(trainer, method("ewc"), task=0)
    smoothing = transformers.Trainer(
        model=tiny_bert(), args=training_args(tmp_path, label_smoothing_factor=0.1),
        train_dataset=token_rows(0), data_collator=collate)
    with pytest.raises(ConfigError, match="label_smoothing_factor"):
        attach(smoothing, method("ewc"), task=0)
    fresh = transformers.Trainer(model=tiny_bert(), args=training_args(tmp_path),
                                 train_dataset=token_rows(0), data_collator=collate)
    with pytest.raises(ConfigError, match="stored samples of earlier tasks"):
        attach(fresh, build_method("joint"), task=0)
    with pytest.raises(ConfigError, match="labels"):
        to_batch({"input_ids": torch.ones(2, 3, dtype=torch.long)}, task=0)
    with pytest.raises(ConfigError, match=r"pip install 'lifelong\[hf\]'"):
        require("a_package_that_is_not_installed")


def test_evaluation_during_training_keeps_the_trainers_loss_and_feeds_no_memory(tmp_path) -> None:
    replay = method("replay")
    trainer = transformers.Trainer(
        model=tiny_bert(), args=training_args(tmp_path, eval_strategy="steps", eval_steps=1),
        train_dataset=token_rows(0), eval_dataset=token_rows(5, count=4), data_collator=collate)
    attach(trainer, replay, task=0)
    trainer.train()
    assert replay.memory.seen == 8  # the 8 training samples, none of the evaluation's
    assert sum("eval_loss" in entry for entry in trainer.state.log_history) == 2


def test_a_method_that_reads_the_training_set_sees_the_tasks_samples(tmp_path) -> None:
    """NCL scales its prior by the task's sample count, given by training_data."""
    ncl = build_method("ncl")
    trainer_for(tiny_bert(), token_rows(0, count=12), tmp_path, ncl, 0).train()
    assert ncl.data_size == 12
