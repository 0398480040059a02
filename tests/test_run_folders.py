"""Run folders that never lie (issue 15, items 3 and 4): grid workers die with their parent, a
folder is used by one process at a time, a finished or unfinished run is never overwritten
silently, default folder names carry the settings, and a --set key of a method that is not in the
run is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lifelong.cli import main
from lifelong.runs.config import RunConfig, StreamConfig
from lifelong.runs.folders import NAME_LIMIT, default_run_folder, default_stream_folder
from lifelong.runs.setup import prepare

FAST = ["--benchmark", "split-digits", "--iterations", "4", "--batch-size", "32", "--hidden", "16",
        "--device", "cpu", "--quiet", "--no-report"]
STREAM = ["--steps", "200", "--bin-size", "100", "--device", "cpu", "--quiet", "--no-report"]
# long enough to be still training when the test acts (each task ~seconds of CPU)
LONG = ["--benchmark", "split-digits", "--iterations", "20000", "--batch-size", "32",
        "--hidden", "16", "--device", "cpu", "--quiet", "--no-report"]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    [str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: what a refusal must leave as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "lifelong.cli", *args], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


# --- 1. workers die with their parent ------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_compare_workers_die_within_5_s_of_a_sigkill_of_the_parent(tmp_path: Path) -> None:
    out = tmp_path / "grid"
    parent = cli("compare", *LONG, "--methods", "naive,ewc", "--jobs", "2", "--out", str(out))
    workers: list[int] = []
    try:
        wait_for(lambda: all((out / m / "seed0" / "config.yaml").is_file()
                             for m in ("naive", "ewc")), 120, "both workers to start training")
        workers = children(parent.pid)
        assert len(workers) >= 2  # the two workers (and multiprocessing's resource tracker)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        killed = time.monotonic()
        wait_for(lambda: not any(alive(pid) for pid in workers), 5, "the workers to die")
        assert time.monotonic() - killed < 5
        time.sleep(3)  # an orphan would go on and write its summary
        assert not list(out.rglob("summary.json")) and not (out / "comparison.json").exists()
    finally:
        for pid in [parent.pid, *workers]:  # only what this test started
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


# --- 2. one process per run folder ---------------------------------------------------------
@pytest.mark.slow
def test_a_run_folder_in_use_is_refused_to_a_second_process_until_the_first_ends(
        tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = cli("run", *LONG, "--out", str(out))
    try:
        wait_for(lambda: (out / "metrics.jsonl").is_file(), 120, "the first run to start")
        before = snapshot(out)
        for args in (["--resume", str(out)], [*FAST, "--out", str(out), "--overwrite"]):
            second = subprocess.run([sys.executable, "-m", "lifelong.cli", "run", *args],
                                    env=ENV, capture_output=True, text=True, timeout=120)
            assert second.returncode == 2, second.stderr
            assert second.stderr == (f"error: {out} is in use by another lifelong process "
                                     f"(pid {first.pid}); wait for it or choose another --out\n")
        assert set(snapshot(out)) >= set(before)  # --overwrite removed nothing of the first
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        first.kill()
        first.wait(timeout=10)
    # the lock died with its holder: nothing stale to clean up before resuming
    claimed = subprocess.run(
        [sys.executable, "-c", "import sys; from lifelong.training.lock import claim_folder\n"
         "with claim_folder(sys.argv[1]): print('claimed')", str(out)],
        env=ENV, capture_output=True, text=True, timeout=120)
    assert claimed.stdout == "claimed\n", claimed.stderr


def test_claims_are_reentrant_in_a_process_and_leave_no_trace(tmp_path: Path) -> None:
    from lifelong.training.lock import LOCK_NAME, claim_folder

    folder = tmp_path / "new"
    with claim_folder(folder), claim_folder(folder):  # the CLI, then the run inside it
        assert (folder / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    assert not folder.exists()  # created by the claim, still empty: removed
    (tmp_path / "kept").mkdir()
    with claim_folder(tmp_path / "kept"):
        (tmp_path / "kept" / "config.yaml").write_text("{}")
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["config.yaml"]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_the_watchdog_alone_ends_an_orphan_within_5_s(tmp_path: Path) -> None:
    """The polling thread, without Linux's parent-death signal (as on macOS)."""
    worker = (f"import os, time, types\nfrom lifelong.training import watchdog\n"
              f"watchdog.sys = types.SimpleNamespace(platform='darwin')  # no PDEATHSIG\n"
              f"watchdog.watch_parent(os.getppid())\n"
              f"open({str(tmp_path / 'ready')!r}, 'w').close()\n"
              f"time.sleep(30)\nopen({str(tmp_path / 'survived')!r}, 'w').close()\n")
    parent = (f"import os, subprocess, sys, time\n"
              f"child = subprocess.Popen([sys.executable, '-c', {worker!r}],\n"
              f"                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
              f"print(child.pid, flush=True)\n"
              f"while not os.path.exists({str(tmp_path / 'ready')!r}) and child.poll() is None:"
              f" time.sleep(0.05)\n"
              f"os._exit(0)  # leaves the worker an orphan\n")
    done = subprocess.run([sys.executable, "-c", parent], env=ENV, capture_output=True,
                          text=True, timeout=120)
    orphan = int(done.stdout)
    try:
        assert (tmp_path / "ready").exists(), done.stderr  # it was watching when orphaned
        wait_for(lambda: not alive(orphan), 5, "the orphan to end itself")
        assert not (tmp_path / "survived").exists()
    finally:
        if alive(orphan):
            os.kill(orphan, signal.SIGKILL)


# --- 3. no silent overwrite ----------------------------------------------------------------
@pytest.mark.parametrize("kind", ["config.yaml", "summary.json", "checkpoint.pt",
                                  "metrics.jsonl"])
def test_run_refuses_a_folder_holding_a_run_before_writing_anything(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / kind).write_text("an earlier run's file")
    assert main(["run", *FAST, "--out", str(out)]) == 2
    err = one_error_line(capsys)
    if kind == "summary.json":  # finished: nothing to resume
        assert f"{out} holds a finished run ({kind}); replace it with --overwrite" in err
    else:
        assert f"{out} holds an unfinished run ({kind}); continue it with --resume {out}, " \
               f"replace it with --overwrite" in err
    assert snapshot(out) == {kind: b"an earlier run's file"}


def test_run_overwrite_replaces_the_old_run_and_keeps_other_files(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["run", *FAST, "--out", str(out), "--seed", "1"]) == 0
    (out / "notes.txt").write_text("mine")
    (out / "report.html").write_text("old report")
    assert main(["run", *FAST, "--out", str(out)]) == 2
    assert json.loads((out / "summary.json").read_text())["seed"] == 1  # untouched
    capsys.readouterr()
    assert main(["run", *FAST, "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "summary.json").read_text())["seed"] == 0
    assert not (out / "report.html").exists() and (out / "notes.txt").read_text() == "mine"
    assert main(["run", "--resume", str(out), "--overwrite"]) == 2
    assert "do not add --overwrite" in one_error_line(capsys)


def test_stream_refuses_a_folder_holding_a_run_unless_overwrite(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "stream"
    assert main(["stream", *STREAM, "--out", str(out)]) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert main(["stream", *STREAM, "--out", str(out), "--seed", "1"]) == 2
    assert f"{out} holds a finished run (config.yaml, summary.json, metrics.jsonl); replace " \
           f"it with --overwrite" in one_error_line(capsys)
    assert snapshot(out) == before
    assert main(["stream", *STREAM, "--out", str(out), "--seed", "1", "--overwrite"]) == 0
    assert json.loads((out / "summary.json").read_text())["seed"] == 1


def test_compare_without_resume_refuses_a_folder_holding_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["compare", *FAST, "--methods", "naive", "--out", str(tmp_path)]
    assert main(args) == 0
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert main([*args, "--lr", "0.5"]) == 2
    assert f"{tmp_path} holds runs (comparison.json, naive/seed0); keep the finished ones and " \
           f"continue the others with --resume, replace them with --overwrite" in \
           one_error_line(capsys)
    assert snapshot(tmp_path) == before  # refused before any file was written
    (tmp_path / "comparison.json").unlink()  # a grid killed before its end: run folders only
    assert main(args) == 2
    assert "holds runs (naive/seed0)" in one_error_line(capsys)
    assert main([*args, "--resume", "--overwrite"]) == 2
    assert "not allowed with argument --resume" in one_error_line(capsys)
    assert main([*args, "--lr", "0.5", "--overwrite"]) == 0
    config = (tmp_path / "naive" / "seed0" / "config.yaml").read_text()
    assert "lr: 0.5" in config and (tmp_path / "comparison.json").is_file()


def test_sweep_resumes_but_refuses_a_run_folder_of_other_settings(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["sweep", *FAST, "--methods", "naive", "--grid", "lr=0.1", "--out", str(tmp_path)]
    assert main(args) == 0
    assert main(args) == 0  # a re-run keeps the finished runs (documented)
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert main([*args, "--hidden", "8"]) == 2
    assert f"{tmp_path / 'naive' / 'lr=0.1' / 'seed0'} holds a run with other settings " \
           f"(hidden); replace it with --overwrite" in one_error_line(capsys)
    assert snapshot(tmp_path) == before
    assert main([*args, "--hidden", "8", "--overwrite"]) == 0
    assert "- 8" in (tmp_path / "naive" / "lr=0.1" / "seed0" / "config.yaml").read_text()


def test_default_run_folders_name_the_settings_that_differ_from_the_defaults() -> None:
    def run_folder(**settings) -> str:
        return default_run_folder(prepare(RunConfig.from_dict(settings))[0])

    assert run_folder() == "runs/split-digits-task-naive-s0"
    assert run_folder(method="ewc", method_params={"ewc": {"lambda": 10}}, lr=0.01) == \
        "runs/split-digits-task-ewc-lambda=10-lr=0.01-s0"
    assert run_folder(scenario="class", method="replay+ewc", seed=2, hidden=[400, 400],
                      method_params={"ewc": {"lambda": 123.0}},
                      benchmark_params={"classes_per_task": 5}) == (
        "runs/split-digits-class-replay+ewc-ewc.lambda=123-classes_per_task=5-hidden=400,400-s2")
    assert run_folder(device="cpu", log="", diagnostics=True) == (
        "runs/split-digits-task-naive-s0")  # where and how it runs: not in the name
    long = run_folder(method="ewc", method_params={"ewc": {"lambda": 12.5, "gamma": 0.5}},
                      lr=0.0123456789, momentum=0.9, weight_decay=1e-5, hidden=[400] * 8,
                      batch_size=64, iterations=200, dropout=0.25)
    assert len(long) - len("runs/") <= NAME_LIMIT and long.endswith("-s0")
    assert long.startswith("runs/split-digits-task-ewc-lambda=12.5-gamma=0.5-batch_size=64-lr=0.01")
    other = run_folder(method="ewc", method_params={"ewc": {"lambda": 12.5, "gamma": 0.5}},
                       lr=0.0123456789, momentum=0.9, weight_decay=1e-5, hidden=[400] * 8,
                       batch_size=64, iterations=200, dropout=0.5)
    assert other != long and len(other) == len(long)  # cut, but told apart by the hash
    stream = default_stream_folder(prepare(StreamConfig.from_dict(
        {"method": "cbp", "lr": 0.001, "steps": 500}))[0])
    assert stream == "runs/stream-slowly-changing-regression-cbp-lr=0.001-steps=500-s0"


def test_default_run_folder_is_refused_like_any_other(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["run", *FAST, "-m", "ewc", "--set", "ewc.lambda=10"]) == 0
    folder = Path("runs/split-digits-task-ewc-lambda=10-hidden=16-iterations=4-s0")
    assert (tmp_path / folder / "summary.json").is_file()
    capsys.readouterr()
    assert main(["run", *FAST, "-m", "ewc", "--set", "ewc.lambda=10"]) == 2
    assert f"{folder} holds a finished run" in one_error_line(capsys)
    assert main(["run", *FAST, "-m", "ewc", "--set", "ewc.lambda=20"]) == 0  # another folder


# --- 4. --set keys of methods that are not in the run ---------------------------------------
@pytest.mark.parametrize(("args", "message"), [
    (["run", *FAST, "-m", "naive", "--set", "ewc.lambda=10"],
     "--set ewc.lambda: method ewc is not in this run (methods: naive)"),
    (["run", *FAST, "-m", "replay+agem", "--set", "ewc.lambda=10"],
     "--set ewc.lambda: method ewc is not in this run (methods: replay, agem)"),
    (["stream", *STREAM, "-m", "naive", "--set", "cbp.replacement_rate=0.1"],
     "--set cbp.replacement_rate: method cbp is not in this run (methods: naive)"),
    (["compare", *FAST, "--methods", "naive,si", "--set", "ewc.lambda=10", "--out", "x"],
     "--set ewc.lambda: method ewc is not in this run (methods: naive, si)"),
    (["sweep", *FAST, "--methods", "naive", "--grid", "ewc.lambda=1,10", "--out", "x"],
     "--grid ewc.lambda: method ewc is not in this run (methods: naive)"),
    (["run", *FAST, "-m", "naive", "--set", "ewk.lambda=10"], "unknown method 'ewk'"),
])
def test_a_setting_of_a_method_not_in_the_run_is_refused(
        args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    assert message in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []  # refused before any folder was made


def test_a_grid_may_set_a_method_that_only_some_of_its_runs_have(tmp_path: Path) -> None:
    assert main(["compare", *FAST, "--methods", "naive,ewc", "--set", "ewc.lambda=10",
                 "--out", str(tmp_path)]) == 0
    config = (tmp_path / "ewc" / "seed0" / "config.yaml").read_text()
    assert "lambda: 10.0" in config
    assert "ewc" not in (tmp_path / "naive" / "seed0" / "config.yaml").read_text()
