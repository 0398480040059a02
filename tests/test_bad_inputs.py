"""Bad inputs, table-driven: each must give one line `error: ...` on stderr, exit status 2, no
traceback, and leave no file behind (above all no config.yaml, checkpoint.pt or metrics.jsonl
that a later `--resume` would take for a run).

To add a case, append a `Bad(id, make, says)` to CASES: `make(tmp)` writes whatever files the case
needs under the folder `tmp` and returns the command line; `says` is a fragment the error line must
hold. Cases run in-process through `lifelong.cli.main` (fast); SUBPROCESS_IDS also run as real
processes, to show that nothing but the one line reaches the terminal.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from lifelong import __version__
from lifelong.cli import main
from lifelong.runs.config import RunConfig
from lifelong.runs.setup import prepare
from lifelong.training.checkpoint import CHECKPOINT
from lifelong.training.rundir import write_yaml

# fast settings: a case whose one bad input went unnoticed would still end in seconds
FAST = ["-b", "split-digits", "--iterations", "1", "--hidden", "16", "--quiet", "--no-report"]
RUN_FILES = ("config.yaml", CHECKPOINT, "metrics.jsonl", "summary.json")


@dataclasses.dataclass(frozen=True)
class Bad:
    id: str
    make: Callable[[Path], list[str]]  # writes the case's files under tmp, returns argv
    says: str  # a fragment of the expected error line


def _file(path: Path, content: str | bytes = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def _dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _unwritable(tmp: Path) -> Path:
    """A folder path this process cannot create (root ignores permission bits, not /sys)."""
    if os.geteuid() == 0:
        return Path("/sys/lifelong-bad-inputs/out")
    locked = tmp / "locked"
    locked.mkdir(mode=0o500)
    return locked / "out"


def _run_folder(tmp: Path, *, config: str | None = None, checkpoint: bytes | None = None,
                name: str = "run") -> Path:
    """An unfinished run's folder `tmp/name`, as `lifelong run` leaves it after a kill, with
    `config` replacing its config.yaml and `checkpoint` its checkpoint.pt."""
    folder = tmp / name
    resolved, _ = prepare(RunConfig.from_dict({"benchmark": "split-digits", "iterations": 1,
                                               "hidden": [16]}))
    write_yaml(folder / "config.yaml", {"lifelong_version": __version__, **resolved.to_dict()})
    if config is not None:
        _file(folder / "config.yaml", config)
    if checkpoint is not None:
        _file(folder / CHECKPOINT, checkpoint)
    return folder


def _finished(tmp: Path, files: dict[str, str] | None = None) -> Path:
    """A finished run's folder `tmp/seed0` (as `compare` names it) with `files` (name: content)
    added or replaced."""
    folder = _run_folder(tmp, name="seed0")
    summary = {"benchmark": "split-digits", "scenario": "task", "method": "naive", "seed": 0,
               "acc": 1.0, "bwt": 0.0, "fwt": 0.0, "forgetting": 0.0, "seconds": 1.0,
               "accuracy_matrix": [[1.0]]}
    _file(folder / "summary.json", json.dumps(summary))
    for name, content in (files or {}).items():
        _file(folder / name, content)
    return folder


class _Payload:
    """Pickles as a call of a function, as a malicious checkpoint does; run, it would write a
    file into the working directory (the case's folder), which `_check` would see."""

    def __reduce__(self):
        return (open, ("executed-by-unpickling", "w"))


def _saved(value: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _npz(tmp: Path, **arrays: np.ndarray) -> Path:
    path = tmp / "data.npz"
    np.savez(path, **arrays)
    return path


def _run(*args: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["run", *FAST, "--out", str(tmp / "out"), *args]


def _config(text: str | bytes, *args: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["run", "--config", str(_file(tmp / "config.yaml", text)), "--out",
                        str(tmp / "out"), "--quiet", "--no-report", *args]


def _resume(**folder: str | bytes) -> Callable[[Path], list[str]]:
    return lambda tmp: ["run", "--resume", str(_run_folder(tmp, **folder)), "--quiet",
                        "--no-report"]


def _compare(*args: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["compare", *FAST, "--methods", "naive", "--out", str(tmp / "out"), *args]


def _stream(*args: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["stream", "--steps", "20", "--quiet", "--no-report", "--out",
                        str(tmp / "out"), *args]


PYTHON_TAG = "seed: !!python/object/apply:os.system ['echo pwned']\n"
CASES = [
    # flags
    Bad("epochs-zero", _run("--epochs", "0"), "run.epochs: 0 is out of range"),
    Bad("epochs-and-iterations", _run("--epochs", "2"), "give --epochs or --iterations"),
    Bad("lr-not-a-number", _run("--lr", "fast"), "argument --lr: invalid float value"),
    Bad("lr-zero", _run("--lr", "0"), "run.lr: 0.0 is out of range"),
    Bad("lr-negative", _run("--lr", "-0.1"), "run.lr: -0.1 is out of range"),
    Bad("batch-size-zero", _run("--batch-size", "0"), "run.batch_size: 0 is out of range"),
    Bad("momentum-above-one", _run("--momentum", "2"), "run.momentum: 2.0 is out of range"),
    Bad("unknown-optimizer", _run("--optimizer", "rmsprop"), "'rmsprop' is not accepted"),
    Bad("unknown-scenario", _run("--scenario", "online"), "'online' is not accepted"),
    Bad("unknown-benchmark", _run("-b", "split-cifar"), "unknown benchmark 'split-cifar'"),
    Bad("unknown-method", _run("-m", "ewk"), "unknown method 'ewk'"),
    Bad("naive-combined", _run("-m", "naive+ewc"), "cannot be combined"),
    Bad("unknown-device", _run("--device", "tpu"), "unknown device 'tpu'"),
    Bad("unknown-model", _run("--model", "transformer"), "unknown model 'transformer'"),
    Bad("hidden-not-numbers", _run("--hidden", "a,b"),
        "run.hidden: expected an integer, got 'a'"),
    Bad("hidden-zero", _run("--hidden", "0"), "run.hidden: 0 is out of range"),
    Bad("dropout-above-one", _run("--dropout", "1.5"), "run.dropout: 1.5 is out of range"),
    Bad("unknown-head", _run("--head", "both"), "'both' is not accepted"),
    Bad("unknown-tracker", _run("--log", "wandb"), "unknown tracker 'wandb'"),
    Bad("seed-negative", _run("--seed", "-1"), "run.seed: -1 is out of range"),
    Bad("unknown-flag", _run("--frobnicate"), "unrecognized arguments: --frobnicate"),
    Bad("flag-without-value", lambda tmp: ["run", *FAST, "--epochs"],
        "argument --epochs: expected one argument"),
    Bad("unknown-command", lambda tmp: ["frobnicate"], "invalid choice: 'frobnicate'"),
    # --set values
    Bad("set-out-of-range", _run("-m", "ewc", "--set", "ewc.lambda=-3"),
        "ewc.lambda: -3.0 is out of range"),
    Bad("set-not-a-number", _run("-m", "ewc", "--set", "ewc.lambda=abc"), "ewc.lambda"),
    Bad("set-unknown-key", _run("-m", "ewc", "--set", "ewc.lamda=3"), "unknown key 'lamda'"),
    Bad("set-unknown-bare-key", _run("-m", "ewc", "--set", "lamda=3"),
        "--set lamda: no such setting"),
    Bad("set-without-equals", _run("--set", "ewc.lambda"), "--set takes KEY=VALUE"),
    Bad("set-unknown-method", _run("--set", "ewk.lambda=3"), "unknown method 'ewk'"),
    Bad("set-ambiguous", _run("-m", "replay+agem", "--set", "memory_size=9"),
        "several methods have it"),
    Bad("set-benchmark-unknown-key", _run("--set", "benchmark.num_tasks=5"),
        "unknown key 'num_tasks' for benchmark"),
    Bad("set-benchmark-zero-tasks", _run("-b", "permuted-mnist", "--set", "benchmark.num_tasks=0"),
        "num_tasks: 0 is out of range"),
    Bad("set-benchmark-impossible-split", _run("--set", "benchmark.classes_per_task=3"),
        "10 classes do not split into tasks of 3"),
    # config files
    Bad("config-missing", lambda tmp: ["run", "--config", str(tmp / "missing.yaml")],
        "does not exist"),
    Bad("config-is-a-directory", lambda tmp: ["run", "--config", str(tmp)], "is a directory"),
    Bad("config-empty", _config(""), "is empty"),
    Bad("config-only-comments", _config("# nothing here\n"), "is empty"),
    Bad("config-broken-yaml", _config("lr: 0.1\n  seed: 0\n"),
        "at line 2, column 7: mapping values are not allowed here"),
    Bad("config-python-tag", _config(PYTHON_TAG),
        "has the tag !!python/object/apply:os.system at line 1, column 7"),
    Bad("config-a-list", _config("- lr: 0.1\n"), "must hold a mapping of settings"),
    Bad("config-unknown-key", _config("frobnicate: 1\n"), "unknown key 'frobnicate' for run"),
    Bad("config-wrong-type", _config("iterations: many\n"), "run.iterations"),
    Bad("config-method-not-a-string", _config("method: 5\n"), "run.method: expected a string"),
    Bad("config-method-params-not-a-mapping", _config("method_params: 3\n"),
        "run.method_params: expected a mapping"),
    Bad("config-method-params-of-a-list", _config("method: ewc\nmethod_params: {ewc: [1]}\n"),
        "run.method_params.ewc: expected a mapping"),
    Bad("config-benchmark-params-a-list", _config("benchmark_params: [1]\n"),
        "run.benchmark_params: expected a mapping"),
    Bad("compare-config-python-tag",
        lambda tmp: ["compare", "--methods", "naive", "--out", str(tmp / "out"), "--config",
                     str(_file(tmp / "config.yaml", "a: !!python/name:os.system\n"))],
        "has the tag !!python/name:os.system at line 1, column 4"),
    Bad("config-not-text", _config(b"\xff\xfe\x00binary\x00"), "is not a text file"),
    # run folders
    Bad("out-is-a-file", lambda tmp: ["run", *FAST, "--out", str(_file(tmp / "file"))],
        "is a file, not a folder"),
    Bad("out-under-a-file", lambda tmp: ["run", *FAST, "--out", str(_file(tmp / "f") / "out")],
        "f is a file, not a folder"),
    Bad("out-unwritable", lambda tmp: ["run", *FAST, "--out", str(_unwritable(tmp))],
        "cannot write the output folder"),
    Bad("compare-out-is-a-file", lambda tmp: ["compare", *FAST, "--methods", "naive",
                                              "--out", str(_file(tmp / "file"))],
        "is a file, not a folder"),
    Bad("compare-out-unwritable", lambda tmp: ["compare", *FAST, "--methods", "naive", "--jobs",
                                               "2", "--out", str(_unwritable(tmp))],
        "cannot write the output folder"),
    Bad("sweep-out-is-a-file", lambda tmp: ["sweep", *FAST, "--methods", "naive", "--grid",
                                            "lr=0.1,0.2", "--out", str(_file(tmp / "file"))],
        "is a file, not a folder"),
    Bad("demo-out-under-a-file", lambda tmp: ["demo", "--seeds", "0", "--out",
                                              str(_file(tmp / "file"))], "file is a file"),
    Bad("stream-out-is-a-file", lambda tmp: ["stream", "--steps", "20", "--quiet", "--out",
                                             str(_file(tmp / "file"))], "is a file, not a folder"),
    Bad("resume-missing-folder", lambda tmp: ["run", "--resume", str(tmp / "nothing")],
        "holds no config.yaml"),
    Bad("resume-with-flags", lambda tmp: ["run", "--resume", str(_run_folder(tmp)), "--lr", "1"],
        "do not add lr"),
    Bad("resume-config-python-tag", _resume(config=PYTHON_TAG), "!!python"),
    Bad("resume-config-broken", _resume(config="lr: [0.1\n"), "line 2, column"),
    Bad("resume-config-empty", _resume(config=""), "is empty"),
    Bad("resume-config-wrong-type", _resume(config="lifelong_version: 0.0\nseed: x\n"),
        "run.seed: expected an integer, got 'x'"),
    Bad("resume-checkpoint-malicious", _resume(checkpoint=_saved({"format": 1, "x": _Payload()})),
        "is not a lifelong checkpoint (it is not a file of tensors and plain values) and was "
        "not loaded"),
    Bad("resume-checkpoint-garbage", _resume(checkpoint=b"not a checkpoint"),
        "is not a lifelong checkpoint"),
    Bad("resume-checkpoint-empty", _resume(checkpoint=b""), "is not a lifelong checkpoint"),
    Bad("resume-checkpoint-a-list", _resume(checkpoint=_saved([1, 2, 3])),
        "is not a lifelong checkpoint"),
    Bad("resume-checkpoint-other-format", _resume(checkpoint=_saved({"format": 99})),
        "checkpoint format 99"),
    Bad("resume-checkpoint-missing-keys", _resume(checkpoint=_saved({"format": 1})),
        "is not a lifelong checkpoint"),
    Bad("resume-checkpoint-of-another-model",
        _resume(checkpoint=_saved({"format": 1, "model": {"weight": torch.zeros(3)},
                                   "optimizer": {}, "method": {}})),
        "is not a lifelong checkpoint"),
    Bad("report-figures-folder-is-a-file",
        lambda tmp: ["report", str(_finished(tmp, {"report": ""}))],
        "seed0/report: it is a file, not a folder"),
    Bad("compare-resume-seed-config-python-tag",
        lambda tmp: ["compare", *FAST, "--methods", "naive", "--resume", "--out",
                     str(_finished(tmp / "out" / "naive", {"config.yaml": PYTHON_TAG}).parents[1])],
        "!!python"),
    Bad("compare-resume-corrupt-summary",
        lambda tmp: ["compare", *FAST, "--methods", "naive", "--resume", "--out",
                     str(_finished(tmp / "out" / "naive", {"summary.json": "{"}).parents[1])],
        "summary.json: Expecting property name"),
    Bad("compare-resume-summary-without-metrics",
        lambda tmp: ["compare", *FAST, "--methods", "naive", "--resume", "--out",
                     str(_finished(tmp / "out" / "naive", {"summary.json": "{}"}).parents[1])],
        "is not a lifelong run's summary: it has no acc"),
    Bad("report-missing-folder", lambda tmp: ["report", str(tmp / "nothing")],
        "nothing' is not a folder"),
    Bad("report-corrupt-summary", lambda tmp: ["report", str(_file(tmp / "r" / "summary.json",
                                                                   "{not json").parent)],
        "summary.json: Expecting property name"),
    # data files
    Bad("arrays-missing", _run("-b", f"arrays:{os.sep}nonexistent{os.sep}data.npz"),
        "data.npz not found"),
    Bad("arrays-corrupt", lambda tmp: ["run", *FAST, "-b",
                                       f"arrays:{_file(tmp / 'data.npz', b'PK garbage')}",
                                       "--out", str(tmp / "out")],
        "data.npz as a .npz of arrays: it is not a .npz (zip) file"),
    Bad("arrays-missing-keys", lambda tmp: ["run", *FAST, "-b",
                                            f"arrays:{_npz(tmp, x=np.zeros((4, 2)))}",
                                            "--out", str(tmp / "out")], "expected x_train"),
    Bad("arrays-nan", lambda tmp: ["run", *FAST, "-b", "arrays:" + str(_npz(
        tmp, x_train=np.full((8, 2), np.nan), y_train=np.arange(8) % 2)), "--out",
        str(tmp / "out")], "NaN"),
    Bad("arrays-pickled-objects", lambda tmp: ["run", *FAST, "-b", "arrays:" + str(_npz(
        tmp, x_train=np.array([object()] * 4), y_train=np.zeros(4))), "--out",
        str(tmp / "out")], "Object arrays cannot be loaded"),
    Bad("images-empty-folder", lambda tmp: ["run", *FAST, "-b", f"folder:{_dir(tmp / 'photos')}",
                                            "--out", str(tmp / "out")], "has no class subfolders"),
    Bad("data-dir-a-file", lambda tmp: ["run", *FAST, "-b", "split-mnist", "--data-dir",
                                        str(_file(tmp / "file"))], "MNIST file"),
    Bad("data-dir-corrupt-mnist",
        lambda tmp: ["run", *FAST, "-b", "split-mnist", "--data-dir", str(_file(
            tmp / "mnist" / "train-images-idx3-ubyte.gz", b"garbage").parents[1])],
        "is corrupt or not the official MNIST"),
    # compare, sweep, stream
    Bad("compare-no-methods", lambda tmp: ["compare", "--methods", ",", "--out", str(tmp)],
        "--methods is empty"),
    Bad("compare-jobs-zero", _compare("--jobs", "0"), "--jobs must be at least 1"),
    Bad("compare-seeds-not-numbers", _compare("--seeds", "a"), "--seeds takes"),
    Bad("compare-method-twice", lambda tmp: ["compare", *FAST, "--methods", "naive,naive",
                                             "--out", str(tmp / "out")], "names a method twice"),
    Bad("compare-unknown-backend", _compare("--backend", "slurm"), "--backend must be"),
    Bad("sweep-grid-without-values", lambda tmp: ["sweep", *FAST, "--methods", "naive",
                                                  "--grid", "lr", "--out", str(tmp / "out")],
        "--grid takes KEY=V1,V2"),
    Bad("stream-unknown-benchmark", _stream("-b", "nope"), "unknown streaming benchmark 'nope'"),
    Bad("stream-steps-zero", _stream("--steps", "0"), "stream.steps: 0 is out of range"),
    Bad("stream-set-unknown", _stream("--set", "cbp.nope=1", "-m", "cbp"), "unknown key 'nope'"),
]
# added with items 1, 3 and 4 of the issue: non-finite settings, folders holding runs, keys
# of methods not in the run
CASES += [
    Bad("lr-nan", _run("--lr", "nan"), "run.lr: nan is not accepted; give a finite number"),
    Bad("lr-inf", _run("--lr", "inf"), "give a finite number"),
    Bad("momentum-minus-inf", _run("--optimizer", "sgd", "--momentum=-inf"),
        "give a finite number"),
    Bad("set-lambda-nan", _run("-m", "ewc", "--set", "ewc.lambda=nan"), "give a finite number"),
    Bad("set-lambda-inf", _run("-m", "ewc", "--set", "lambda=inf"), "give a finite number"),
    Bad("config-lr-nan", _config("lr: .nan\n"), "give a finite number"),
    Bad("compare-lr-inf", _compare("--lr", "inf"), "give a finite number"),
    Bad("stream-lr-nan", _stream("--lr", "nan"), "give a finite number"),
    Bad("set-method-not-in-run", _run("--set", "ewc.lambda=10"),
        "method ewc is not in this run (methods: naive)"),
    Bad("grid-method-not-in-grid", lambda tmp: ["sweep", *FAST, "--methods", "naive", "--out",
                                                str(tmp / "out"), "--grid", "ewc.lambda=1,2"],
        "method ewc is not in this run (methods: naive)"),
    Bad("run-out-onto-finished-run", lambda tmp: ["run", *FAST, "--out", str(_finished(tmp))],
        "holds a finished run"),
    Bad("run-out-onto-unfinished-run", lambda tmp: ["run", *FAST, "--out", str(_run_folder(tmp))],
        "continue it with --resume"),
    Bad("stream-out-onto-run", lambda tmp: ["stream", "--steps", "20", "--quiet", "--no-report",
                                            "--out", str(_finished(tmp))], "holds a finished run"),
    Bad("compare-onto-comparison", lambda tmp: ["compare", *FAST, "--methods", "naive", "--out",
                                                str(_file(tmp / "out" / "comparison.json",
                                                          "{}").parent)], "holds runs"),
    Bad("compare-resume-and-overwrite", _compare("--resume", "--overwrite"), "not allowed with"),
    Bad("resume-and-overwrite", lambda tmp: ["run", "--resume", str(_run_folder(tmp)),
                                             "--overwrite"], "do not add --overwrite"),
]
SUBPROCESS_IDS = ("compare-out-unwritable", "resume-checkpoint-malicious", "config-python-tag")


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


def _check(tmp: Path, before: set[Path], code: int, err: str, says: str) -> None:
    assert "Traceback" not in err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert says in err
    left = _files(tmp) - before
    assert not [p for p in left if p.name in RUN_FILES], f"left behind: {sorted(left)}"
    assert not left, f"left behind: {sorted(left)}"


def test_cases_have_distinct_ids_and_are_enough() -> None:
    ids = [case.id for case in CASES]
    assert len(set(ids)) == len(ids) >= 40
    assert set(SUBPROCESS_IDS) <= set(ids)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_gives_one_line_and_status_2(case: Bad, tmp_path: Path,
                                               capsys: pytest.CaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a default output folder would land here, and be seen
    monkeypatch.setenv("LIFELONG_NO_DOWNLOAD", "1")  # a missing data file: an error, not a fetch
    argv = case.make(tmp_path)
    before = _files(tmp_path)
    capsys.readouterr()
    code = main(argv)
    _check(tmp_path, before, code, capsys.readouterr().err, case.says)


@pytest.mark.slow
def test_no_traceback_reaches_the_terminal(tmp_path: Path) -> None:
    """A few cases as real processes, all at once (each pays for importing torch)."""
    cases = [case for case in CASES if case.id in SUBPROCESS_IDS]
    started = []
    for case in cases:
        folder = tmp_path / case.id
        folder.mkdir()
        argv = case.make(folder)
        started.append((case, folder, _files(folder), subprocess.Popen(
            [sys.executable, "-m", "lifelong.cli", *argv], cwd=folder, text=True,
            env={**os.environ, "LIFELONG_NO_DOWNLOAD": "1"},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
    for case, folder, before, process in started:
        _, err = process.communicate(timeout=120)
        _check(folder, before, process.returncode, err, case.says)
