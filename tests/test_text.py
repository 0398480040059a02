"""Text tasks, text scenarios (classify / generate / mlm / clm) and text benchmarks end to end."""

from __future__ import annotations

import os

import pytest
import torch
import yaml
from helpers import SHARED_DATA
from text_helpers import LABELS, write_text_tasks

pytest.importorskip("transformers", reason="the text tests need lifelong[hf]")

from lifelong.core.batch import IGNORE  # noqa: E402
from lifelong.data.text import load_text_task  # noqa: E402
from lifelong.errors import ConfigError  # noqa: E402
from lifelong.models.hf import PAD, build_hf_model, byte_tokenizer  # noqa: E402
from lifelong.runs.config import RunConfig  # noqa: E402
from lifelong.runs.experiment import run_experiment  # noqa: E402
from lifelong.scenarios.benchmarks import get_benchmark  # noqa: E402
from lifelong.scenarios.text import text_scenario  # noqa: E402
from lifelong.training.evaluate import evaluate  # noqa: E402


@pytest.fixture
def text_dir(tmp_path):
    return str(write_text_tasks(tmp_path))


def tasks(text_dir, names=("agnews", "amazon", "yelp")):
    return [load_text_task(n, text_dir) for n in names]


# --- data --------------------------------------------------------------------------------------
def test_real_text_tasks_have_the_documented_sizes():
    root = os.path.abspath(SHARED_DATA)
    if not os.path.isdir(os.path.join(root, "text", "agnews")):
        pytest.skip(f"../shared/data/text not found at {root}")
    agnews = load_text_task("agnews", root)
    assert agnews.labels == LABELS["agnews"]
    assert (len(agnews.train_texts), len(agnews.test_texts)) == (4000, 7600)
    dbpedia = load_text_task("dbpedia", root)
    assert (len(dbpedia.train_texts), len(dbpedia.test_texts)) == (5600, 2000)
    assert set(dbpedia.train_labels.tolist()) == set(range(14))


def test_missing_task_and_bad_lines_are_named(tmp_path, text_dir):
    with pytest.raises(ConfigError, match="text task 'nope' not found.*labels.json"):
        load_text_task("nope", text_dir)
    bad = tmp_path / "text" / "agnews" / "train.jsonl"
    bad.write_text('{"text": "x", "label": "Nonsense"}\n')
    with pytest.raises(ConfigError, match=r"train.jsonl:1: .*'label' among"):
        load_text_task("agnews", text_dir)


def test_hub_source_reads_a_datasets_dataset(monkeypatch):
    datasets = pytest.importorskip("datasets")
    label = datasets.ClassLabel(names=["bad", "good"])
    features = datasets.Features({"text": datasets.Value("string"), "label": label})
    fake = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": [0, 1, 1]},
                                            features=features),
        "test": datasets.Dataset.from_dict({"text": ["d"], "label": [1]}, features=features)})
    asked = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name: asked.append(name) or fake)
    task = load_text_task("reviews", source="hub:someone/reviews")
    assert asked == ["someone/reviews"]
    assert task.labels == ["bad", "good"] and task.train_texts == ["a", "b", "c"]
    assert task.train_labels.tolist() == [0, 1, 1] and task.test_labels.tolist() == [1]
    with pytest.raises(ConfigError, match="no column 'body'"):
        load_text_task("reviews", source="hub:someone/reviews", text_column="body")
    with pytest.raises(ConfigError, match="no hub dataset is known"):
        load_text_task("reviews", source="hub")


def test_subset_is_seeded_and_bounded(text_dir):
    task = load_text_task("agnews", text_dir)
    a, b = task.subset(5, 3, seed=1), task.subset(5, 3, seed=1)
    assert a.train_texts == b.train_texts and len(a.train_texts) == 5 and len(a.test_texts) == 3
    assert task.subset(5, 3, seed=2).train_texts != a.train_texts


# --- scenarios ---------------------------------------------------------------------------------
def test_classification_labels_per_scenario(text_dir):
    tok = byte_tokenizer()
    data = tasks(text_dir)
    task_il = text_scenario(data, tok, model="tiny-bert", scenario="task", max_length=24)
    assert task_il.num_outputs == 4 + 5 + 5
    assert task_il.readout.task_units[1] == list(range(4, 9))
    batch = task_il.tasks[1].train_data()
    assert batch.y.tolist() == data[1].train_labels.tolist()  # task-local labels
    assert batch.x.shape == (16, 24) and (batch.x[:, -1] == PAD).any()
    assert ((batch.x >= 0) | (batch.x == PAD)).all()
    # one shared head: a unit per label name, each task reading its own
    shared = text_scenario(data, tok, model="tiny-bert", scenario="task", head="shared",
                           max_length=24)
    assert shared.num_outputs == 9 and shared.readout.kind == "task"
    assert shared.readout.task_units[1] == shared.readout.task_units[2] == list(range(4, 9))
    assert shared.tasks[2].train_data().y.tolist() == data[2].train_labels.tolist()
    # class-incremental: Amazon's and Yelp's ratings have the same names, so the same units
    class_il = text_scenario(data, tok, model="tiny-bert", scenario="class", max_length=24)
    assert class_il.num_outputs == 4 + 5
    assert class_il.readout.task_units[1] == class_il.readout.task_units[2] == list(range(4, 9))
    assert class_il.tasks[2].train_data().y.tolist() == (data[2].train_labels + 4).tolist()


def test_generation_targets_are_the_next_answer_tokens(text_dir):
    tok = byte_tokenizer()
    data = tasks(text_dir, ("amazon",))
    scenario = text_scenario(data, tok, model="tiny-llama", format="generate", max_length=160)
    batch = scenario.tasks[0].train_data()
    for row in range(len(batch)):
        x, y = batch.x[row], batch.y[row]
        positions = (y != IGNORE).nonzero().squeeze(1)
        assert torch.equal(y[positions], x[positions + 1])  # y[i] is the token after i
        answer = tok.decode(y[positions])
        label = data[0].labels[data[0].train_labels[row]]
        assert answer == f" {label}</s>"
        prompt = tok.decode(x[:positions[0] + 1])
        assert prompt.endswith("\nAnswer:") and "Task: amazon. Choose one of:" in prompt


def test_generation_needs_room_for_the_answer(text_dir):
    with pytest.raises(ConfigError, match="raise max_length"):
        text_scenario(tasks(text_dir, ("amazon",)), byte_tokenizer(), model="tiny-llama",
                      format="generate", max_length=40).tasks[0].train_data()


def test_sequence_accuracy_is_greedy_generation_exact_match(text_dir):
    """The evaluator scores teacher-forced arg-max; greedy decoding must agree sample by sample."""
    torch.manual_seed(0)
    tok = byte_tokenizer()
    scenario = text_scenario(tasks(text_dir, ("agnews",)), tok, model="tiny-llama",
                             format="generate", max_length=120)
    data = scenario.tasks[0].train_data()
    model = build_hf_model("tiny-llama", 0, format="generate", vocab_size=len(tok))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):  # learn some answers, not all
        optimizer.zero_grad()
        data.loss(model(data.x)).backward()
        optimizer.step()
    model.eval()
    hits = []
    for row in range(len(data)):
        positions = (data.y[row] != IGNORE).nonzero().squeeze(1)
        prompt = data.x[row, :positions[0] + 1].unsqueeze(0)
        generated = model.model.generate(prompt, attention_mask=torch.ones_like(prompt),
                                          max_new_tokens=len(positions), do_sample=False,
                                          eos_token_id=tok.eos_token_id,
                                          pad_token_id=tok.pad_token_id)
        new = generated[0, prompt.shape[1]:]
        hits.append(new.tolist() == data.y[row, positions].tolist())
    accuracy, _ = evaluate(model, scenario.readout, data, batch_size=5)
    assert 0 < sum(hits) and accuracy == pytest.approx(sum(hits) / len(hits))


def test_mlm_masks_fifteen_percent_of_real_tokens(text_dir):
    tok = byte_tokenizer()
    scenario = text_scenario(tasks(text_dir), tok, model="tiny-bert", format="mlm",
                             max_length=32, seed=3)
    original = text_scenario(tasks(text_dir), tok, model="tiny-bert", format="classify",
                             max_length=32, scenario="domain")
    masked, clean = scenario.tasks[0].train_data(), original.tasks[0].train_data()
    chosen = masked.y != IGNORE
    real = (clean.x >= 0) & (clean.x != tok.bos_token_id) & (clean.x != tok.eos_token_id)
    assert not (chosen & ~real).any()  # never padding or special tokens
    assert torch.equal(masked.y[chosen], clean.x[chosen])
    assert 0.08 < chosen.sum() / real.sum() < 0.22
    mask_share = (masked.x[chosen] == tok.mask_token_id).float().mean()
    assert 0.6 < mask_share < 0.95
    assert torch.equal(masked.x[~chosen], clean.x[~chosen])
    assert scenario.per_token and not original.per_token


def test_clm_targets_are_shifted_inputs(text_dir):
    scenario = text_scenario(tasks(text_dir), byte_tokenizer(), model="tiny-llama",
                             format="clm", max_length=32)
    batch = scenario.tasks[0].train_data()
    valid = batch.y[:, :-1] != IGNORE
    assert torch.equal(batch.y[:, :-1][valid], batch.x[:, 1:][valid])
    assert ((batch.x[:, 1:] >= 0) == valid).all()


# --- benchmarks and runs -----------------------------------------------------------------------
SMALL = {"train_per_task": 12, "test_per_task": 6, "max_length": 32}


def test_text_standard_orders_and_yahoo_note(text_dir):
    bench = get_benchmark("text-standard")
    for order, first in ((1, "dbpedia"), (2, "dbpedia"), (3, "yelp")):
        scenario = bench.build("task", data_dir=text_dir, options={**SMALL, "order": order},
                               model="hf:tiny-bert")
        assert scenario.tasks[0].name == first and "yelp in place of yahoo" in scenario.name
    assert [t.name for t in bench.build("task", data_dir=text_dir, options=SMALL,
                                        model="hf:tiny-bert").tasks] == [
        "dbpedia", "amazon", "yelp", "agnews"]
    with pytest.raises(ConfigError, match="yahoo is not available offline"):
        bench.build("task", data_dir=text_dir, options={**SMALL, "tasks": "agnews,yahoo"},
                    model="hf:tiny-bert")


def test_text_long_leaves_out_yahoo_and_says_so():
    from lifelong.scenarios.text_benchmarks import LONG_ORDER, task_order

    names, note = task_order("text-long", get_benchmark("text-long").options())
    assert len(names) == 14 and "yahoo" not in names and names == list(LONG_ORDER)
    assert names[:3] == ["yelp", "amazon", "mnli"] and names[-1] == "wic"
    assert "yahoo left out" in note


@pytest.mark.parametrize("model, fmt", [("hf:tiny-bert", "classify"),
                                        ("hf:tiny-llama", "generate"),
                                        ("hf:tiny-gpt2", "generate")])
def test_text_runs_end_to_end(tmp_path, text_dir, model, fmt):
    length = 32 if fmt == "classify" else 160  # bytes: the instruction lists the options
    config = RunConfig(benchmark="text-standard", model=model, method="ewc", lr=1e-3,
                       data_dir=text_dir,
                       benchmark_params={**SMALL, "tasks": "agnews,amazon", "max_length": length},
                       device="cpu")
    result = run_experiment(config, tmp_path / "run", progress=False)
    assert len(result.accuracy_matrix) == 2 and len(result.accuracy_matrix[0]) == 2
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert written["model"] == model
    assert written["optimizer"] == "adamw" and written["eval_batch_size"] == 64


def test_text_domains_mlm_scores_tokens(tmp_path, text_dir):
    config = RunConfig(benchmark="text-domains", model="hf:tiny-bert", lr=1e-3,
                       data_dir=text_dir, benchmark_params=SMALL, device="cpu")
    result = run_experiment(config, None, progress=False)
    assert len(result.accuracy_matrix) == 4
    assert all(0 <= a <= 1 for row in result.accuracy_matrix for a in row)
    assert result.loss_matrix[0][0] < torch.log(torch.tensor(261.0)).item() + 1


def test_text_configuration_errors(text_dir):
    base = dict(data_dir=text_dir, benchmark_params=SMALL, device="cpu")
    with pytest.raises(ConfigError, match="needs a Hugging Face model"):
        run_experiment(RunConfig(benchmark="text-standard", model="mlp", **base), None,
                       progress=False)
    with pytest.raises(ConfigError, match="reads token ids"):
        run_experiment(RunConfig(benchmark="split-digits", model="hf:tiny-bert"), None,
                       progress=False)
    with pytest.raises(ConfigError, match="needs a decoder"):
        run_experiment(RunConfig(benchmark="text-standard", model="hf:tiny-bert",
                                 **{**base, "benchmark_params": {**SMALL, "format": "generate"}}),
                       None, progress=False)


# --- methods on token logits -------------------------------------------------------------------
def test_per_sample_loop_equals_vmap():
    from helpers import tiny_mlp

    from lifelong.core.batch import Batch
    from lifelong.functional.fisher import diagonal_fisher

    model = tiny_mlp()
    batch = Batch(torch.randn(6, 8), torch.randint(0, 4, (6,)))
    select = lambda out, ids: out  # noqa: E731
    for kind in ("empirical", "true"):
        by_vmap = diagonal_fisher(model, [batch], select, kind=kind, implementation="vmap")
        by_loop = diagonal_fisher(model, [batch], select, kind=kind, implementation="loop")
        for name in by_vmap:
            torch.testing.assert_close(by_loop[name], by_vmap[name])


def test_fisher_of_token_logits_is_the_answer_log_likelihood(text_dir):
    """Empirical Fisher of a decoder: per sample, the squared gradient of Σ log p(target token)."""
    from lifelong.functional.fisher import diagonal_fisher

    torch.manual_seed(0)
    tok = byte_tokenizer()
    scenario = text_scenario(tasks(text_dir, ("agnews",)), tok, model="tiny-llama",
                             format="generate", max_length=120)
    data = scenario.tasks[0].train_data().select(slice(0, 3))
    model = build_hf_model("tiny-llama", 0, format="generate", vocab_size=len(tok))
    model.eval()
    fisher = diagonal_fisher(model, [data], lambda out, ids: out, kind="empirical")
    params = dict(model.named_parameters())
    expected = {n: torch.zeros_like(p) for n, p in params.items()}
    for row in range(len(data)):
        logits = model(data.x[row:row + 1])[0]
        positions = (data.y[row] != IGNORE).nonzero().squeeze(1)
        log_likelihood = sum(torch.log_softmax(logits[i], -1)[data.y[row, i]]
                             for i in positions.tolist())
        grads = torch.autograd.grad(log_likelihood, list(params.values()), allow_unused=True)
        for name, g in zip(params, grads):
            if g is not None:
                expected[name] += g.square() / len(data)
    for name in expected:
        torch.testing.assert_close(fisher[name], expected[name], rtol=1e-4, atol=1e-10)
    with pytest.raises(ConfigError, match="use fisher=empirical or fisher=sampled"):
        diagonal_fisher(model, [data], lambda out, ids: out, kind="true")


def test_lwf_distils_token_logits_at_real_tokens_only(text_dir):
    from lifelong.core import build_method
    from lifelong.functional.distillation import distillation_loss

    torch.manual_seed(0)
    tok = byte_tokenizer()
    scenario = text_scenario(tasks(text_dir, ("agnews", "amazon")), tok, model="tiny-llama",
                             format="generate", max_length=200)
    model = build_hf_model("tiny-llama", 0, format="generate", vocab_size=len(tok))
    method = build_method("lwf").attach(model, torch.optim.SGD(model.parameters(), lr=0.1),
                                        scenario.readout)
    method.before_task(0)
    method.before_task(1)
    with torch.no_grad():
        for p in model.parameters():  # the student moves away from the teacher
            p.add_(0.05 * torch.randn_like(p))
    batch = scenario.tasks[1].train_data().select(slice(0, 4))
    output = model(batch.x)
    teacher = method.teacher(batch.x)
    tokens = batch.x >= 0
    assert not tokens.all()  # some padding to leave out
    expected = method.config.alpha * distillation_loss(output[tokens], teacher[tokens],
                                                       method.config.temperature)
    torch.testing.assert_close(method.penalty(batch, output), expected)
    everywhere = method.config.alpha * distillation_loss(output, teacher,
                                                         method.config.temperature)
    assert not torch.allclose(expected, everywhere)


def test_lora_adapters_get_their_own_learning_rate():
    from lifelong.core import build_method

    model = build_hf_model("tiny-bert", 3, format="classify", vocab_size=261)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    build_method("o-lora", {"o-lora": {"lr": 1e-3}}).attach(model, optimizer)
    assert optimizer.param_groups[0]["lr"] == 5e-5 and optimizer.param_groups[-1]["lr"] == 1e-3
    adapters = {id(p) for p in optimizer.param_groups[-1]["params"]}
    assert adapters and all("lora_" in n for n, p in model.named_parameters()
                            if id(p) in adapters)


def test_classifier_skips_all_padding_columns_without_changing_its_output():
    """Trailing columns that are padding in every row are cut for speed; the logits must be those
    of the full batch (and a row's own padding still masked)."""
    torch.manual_seed(0)
    model = build_hf_model("tiny-bert", 3, format="classify", vocab_size=261).eval()
    x = torch.randint(5, 261, (3, 12))
    x[1, 7:] = PAD  # a shorter row inside the batch
    padded = torch.cat([x, torch.full((3, 20), PAD)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(padded), model(x))
        alone = model(x[1:2, :7])
        torch.testing.assert_close(model(x)[1:2], alone, rtol=1e-5, atol=1e-6)
