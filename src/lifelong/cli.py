"""The `lifelong` command: list, run, compare, stream, report, demo.

Every user error (unknown name, value out of range, missing data file, bad combination) prints one
line `error: ...` naming the problem and what is accepted, and exits with status 2.

Exit status: 0 done; 2 a user error, refused before any training; 3 a run diverged (non-finite
loss or weights; `error: diverged: ...` names the task, step and what was kept, summary.json says
`"status": "diverged"`; `compare`/`sweep` finish the other runs first); 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from .errors import ConfigError, DivergedError, LifelongError

EXIT_DIVERGED = 3  # a run diverged (see the module docstring)
NO_REPORT_HELP = "do not write report.html (figures and tables) into the output folder"
OVERWRITE_HELP = "replace the run(s) already in --out (default: refuse)"
OUT_HELP = "output folder (default: runs/{}-SETTINGS-sSEED, with the settings not left to defaults)"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, status 2, no usage dump
        raise ConfigError(f"{message} (see: {self.prog} --help)")


def _add_training_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training (defaults: the benchmark's protocol)")
    group.add_argument("--benchmark", "-b", help="benchmark name (lifelong list)")
    group.add_argument("--scenario", help="task, domain or class (incremental)")
    group.add_argument("--epochs", type=int, help="passes over each task's data")
    group.add_argument("--iterations", type=int, help="mini-batches per task instead of epochs")
    group.add_argument("--batch-size", type=int)
    group.add_argument("--lr", type=float, help="learning rate")
    group.add_argument("--optimizer", help="sgd, adam or adamw")
    group.add_argument("--momentum", type=float, help="SGD momentum")
    group.add_argument("--weight-decay", type=float)
    group.add_argument("--model", help="mlp, cnn, resnet18, or hf:NAME_OR_PATH for text "
                       "benchmarks, e.g. hf:all-MiniLM-L6-v2, hf:tiny-bert (default: the "
                       "benchmark's)")
    group.add_argument("--hidden", help="hidden layer widths, e.g. 400,400")
    group.add_argument("--dropout", type=float)
    group.add_argument("--width", type=int, help="channels of the first convolution (cnn 32, "
                                                 "resnet18 20)")
    group.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=None,
                       help="BatchNorm in the model (default: resnet18 only)")
    group.add_argument("--head", help="task-incremental output: multi (default) or shared")
    group.add_argument("--eval-batch-size", type=int)
    group.add_argument("--device", help="auto (default), cpu, cuda, cuda:N, mps")
    group.add_argument("--data-dir", help="dataset folder (default: $LIFELONG_DATA, then cache)")
    group.add_argument("--diagnostics", action="store_true", default=None,
                       help="after each task: dead units, effective/stable rank, weight and "
                            "gradient magnitude, plasticity (to metrics.jsonl)")
    group.add_argument("--log", metavar="TRACKERS", help="also log every metric to tensorboard, "
                       "mlflow or both: tensorboard,mlflow (pip install lifelong[tracking])")
    group.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                       help="a method or benchmark setting: ewc.lambda=100, "
                            "benchmark.num_tasks=5 (repeatable)")
    group.add_argument("--config", help="a YAML file of run settings (e.g. a run's config.yaml); "
                                        "flags override it")
    group.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    group.add_argument("--keep-checkpoint", action="store_true", default=None,
                       help="keep checkpoint.pt once a run has finished (default: deleted once "
                            "its summary.json is written; kept while unfinished)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lifelong", description="Continual learning for PyTorch.")
    from ._version import __version__

    parser.add_argument("--version", action="version", version=f"lifelong {__version__}")
    commands = parser.add_subparsers(dest="command", parser_class=_Parser, required=True)

    listing = commands.add_parser("list", help="methods, benchmarks and models")
    listing.add_argument("--verbose", "-v", action="store_true",
                         help="also every setting of each method and benchmark (--set KEY=VALUE)")

    run = commands.add_parser("run", help="train and evaluate one method on one benchmark")
    run.add_argument("--method", "-m", help="method, or methods joined by '+' (replay+ewc)")
    run.add_argument("--seed", type=int)
    run.add_argument("--out", help=OUT_HELP.format("BENCHMARK-SCENARIO-METHOD"))
    run.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    run.add_argument("--no-report", action="store_true", help=NO_REPORT_HELP)
    run.add_argument("--resume", metavar="DIR",
                     help="continue the run in DIR from its last checkpoint (written after every "
                          "task), with DIR's config.yaml; the result equals an uninterrupted run")
    _add_training_flags(run)

    compare = commands.add_parser("compare", help="a grid of methods x seeds, mean ± std")
    sweep = commands.add_parser(
        "sweep", help="a grid of methods x hyper-parameters x seeds, locally or on Ray; a re-run "
        "skips finished runs")
    for grid in (compare, sweep):
        grid.add_argument("--methods", required=True,
                          help="comma-separated, e.g. naive,ewc,replay")
        grid.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
        grid.add_argument("--jobs", "-j", type=int, default=1,
                          help="parallel processes (local backend)")
        grid.add_argument("--backend", default="local",
                          help="local (processes on this machine) or ray (lifelong[ray])")
        grid.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else "
                                            "a local Ray instance)")
        grid.add_argument("--out", required=True, help="output folder")
        grid.add_argument("--no-report", action="store_true", help=NO_REPORT_HELP)
        _add_training_flags(grid)
    keep = compare.add_mutually_exclusive_group()  # --resume keeps the runs, --overwrite not
    keep.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    sweep.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    keep.add_argument("--resume", action="store_true",
                      help="keep finished runs in --out whose configuration is the same and "
                           "continue unfinished ones from their checkpoints (others: refused)")
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                       help="values of a setting to sweep (repeatable): lr=0.01,0.1, "
                            "ewc.lambda=1e2,1e4, benchmark.num_tasks=5,10; separate values "
                            "with ';' when they hold commas: hidden=100,100;400,400")

    stream = commands.add_parser(
        "stream", help="online learning on a stream: batch 1, each sample scored before the "
        "update, task-free by default")
    stream.add_argument("--benchmark", "-b", default=None,
                        help="streaming benchmark (default slowly-changing-regression)")
    stream.add_argument("--method", "-m", help="method, or methods joined by '+'")
    stream.add_argument("--seed", type=int)
    stream.add_argument("--tasks", type=int, help="number of tasks (default: the benchmark's)")
    stream.add_argument("--steps", type=int, help="stop after this many samples")
    stream.add_argument("--batch-size", type=int)
    stream.add_argument("--lr", type=float)
    stream.add_argument("--optimizer", help="sgd (default), adam or adamw")
    stream.add_argument("--momentum", type=float)
    stream.add_argument("--weight-decay", type=float)
    stream.add_argument("--hidden", help="hidden layer widths, e.g. 100,100")
    stream.add_argument("--bin-size", type=int, help="samples per bin of the online metric")
    stream.add_argument("--boundaries", action="store_true", default=None,
                        help="announce task boundaries to the method")
    stream.add_argument("--diagnostics", action="store_true", default=None,
                        help="dead units, effective/stable rank, weight and gradient magnitude, "
                             "plasticity on a probe set, at each bin")
    stream.add_argument("--diagnose-every", type=int, help="samples between diagnoses")
    stream.add_argument("--probe-size", type=int, help="probe samples (default 2000)")
    stream.add_argument("--device", help="auto (default), cpu, cuda, cuda:N, mps")
    stream.add_argument("--data-dir", help="dataset folder (default: $LIFELONG_DATA, then cache)")
    stream.add_argument("--log", metavar="TRACKERS", help="also log every metric to tensorboard, "
                        "mlflow or both: tensorboard,mlflow (pip install lifelong[tracking])")
    stream.add_argument("--set", dest="settings", action="append", default=[],
                        metavar="KEY=VALUE", help="cbp.replacement_rate=1e-4, "
                        "benchmark.samples_per_task=5000 (repeatable)")
    stream.add_argument("--out", help=OUT_HELP.format("stream-BENCHMARK-METHOD"))
    stream.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    stream.add_argument("--no-report", action="store_true", help=NO_REPORT_HELP)
    stream.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")

    demo = commands.add_parser("demo", help="naive, ewc, lwf, replay and agem on split-digits")
    demo.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    demo.add_argument("--jobs", "-j", type=int, default=None, help="parallel processes "
                      "(default: the number of CPU cores)")
    demo.add_argument("--out", default="runs/demo", help="output folder")

    report = commands.add_parser(
        "report", help="write FOLDER/report.html: tables and figures of a run or compare folder")
    report.add_argument("folder", help="a run folder (summary.json) or a compare folder "
                                       "(comparison.json)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        handler = {"list": _cmd_list, "run": _cmd_run, "compare": _cmd_compare,
                   "sweep": _cmd_compare,
                   "stream": _cmd_stream, "demo": _cmd_demo, "report": _cmd_report}[args.command]
        return handler(args) or 0
    except LifelongError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_DIVERGED if isinstance(error, DivergedError) else 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# --- settings ------------------------------------------------------------------------------------
def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated integers, got '{text}'") from None
    if not values:
        raise ConfigError(f"{flag} is empty")
    return values


def base_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Run settings from --config, then the flags given on the command line."""
    from .runs.config import RunConfig
    from .runs.settings import RUN_FLAGS

    settings: dict[str, Any] = {}
    if args.config:
        from .training.rundir import read_yaml

        loaded = read_yaml(Path(args.config), f"--config file '{args.config}'")
        loaded.pop("lifelong_version", None)
        settings.update(loaded)
    for name in RUN_FLAGS + ("method",):
        value = getattr(args, name, None)
        if value is not None:
            settings[name] = value
    RunConfig.from_dict(settings)  # each value's type, before --set routing reads them
    return settings


# --- commands ------------------------------------------------------------------------------------
def _console():
    from rich.console import Console

    return Console(highlight=False)


def _cmd_list(args: argparse.Namespace) -> int:
    from .catalog import print_catalog

    print_catalog(_console(), verbose=args.verbose)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .runs.config import RunConfig
    from .runs.experiment import run_experiment
    from .runs.folders import claim_new_run, default_run_folder
    from .runs.settings import route_settings
    from .runs.setup import prepare

    if args.resume:
        return _resume_run(args)
    settings = base_settings(args)
    settings = route_settings(args.settings, settings.get("method", "naive"), settings)
    config = RunConfig.from_dict(settings)
    resolved, _ = prepare(config)
    out = args.out or default_run_folder(resolved)
    with claim_new_run(out, overwrite=args.overwrite):
        _console().print(f"[bold]{resolved.method}[/] on [bold]{resolved.benchmark}[/] "
                         f"({resolved.scenario}-incremental), seed {resolved.seed} -> {out}")
        _show_run(args, _reporting(args, out, lambda: run_experiment(
            config, out, progress=not args.quiet)), out)
    return 0


def _show_run(args: argparse.Namespace, result: Any, out: str | Path) -> None:
    """A finished run's matrix and metrics, where its files are, and its report.html."""
    from .report.tables import accuracy_matrix_table, metrics_table

    console = _console()
    console.print(accuracy_matrix_table(result.accuracy_matrix, result.baseline_accuracy))
    console.print(metrics_table(result.summary()))
    console.print(f"wrote {out}/summary.json, config.yaml, metrics.jsonl")
    _auto_report(args, out)


def _resume_run(args: argparse.Namespace) -> int:
    from .runs.experiment import resume_experiment

    given = sorted(base_settings(args)) + (["--set"] if args.settings else []) + (
        ["--out"] if args.out else []) + (["--overwrite"] if args.overwrite else [])
    if given:
        raise ConfigError(f"--resume takes the run's settings from DIR/config.yaml; do not add "
                          f"{', '.join(given)}")
    out = Path(args.resume)
    console = _console()
    if (out / "summary.json").is_file():
        if _summary_status(out) == "diverged":  # resuming would repeat the same divergence
            print(f"error: {out} diverged (see its summary.json); resuming would diverge again "
                  f"from the same checkpoint: start a new run with other settings",
                  file=sys.stderr)
            return EXIT_DIVERGED
        console.print(f"{out} is finished (summary.json); nothing to resume")
        return 0
    console.print(f"resuming {out}")
    _show_run(args, resume_experiment(out, progress=not args.quiet), out)
    return 0


def _summary_status(folder: Path) -> str | None:
    """The `status` a run's summary.json records (None: unreadable or from an older version)."""
    import json

    try:
        return json.loads((folder / "summary.json").read_text(encoding="utf-8")).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def _cmd_compare(args: argparse.Namespace) -> int:
    """`compare` and `sweep` (which adds --grid and always skips finished runs)."""
    from .report.tables import comparison_table
    from .runs.grid import diverged_runs, parse_grid, run_grid

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise ConfigError("--methods is empty; give e.g. naive,ewc,replay")
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
    seeds = _int_list(args.seeds, "--seeds")
    settings = base_settings(args)
    sweeping = args.command == "sweep"
    comparison = run_grid(settings, methods, seeds, args.settings, Path(args.out),
                          jobs=args.jobs, progress=not args.quiet,
                          resume=sweeping or args.resume, overwrite=args.overwrite,
                          grid=parse_grid(args.grid) if sweeping else None,
                          backend=args.backend, address=args.address)
    _console().print(comparison_table(comparison))
    print(f"wrote {args.out}/comparison.json and one folder per run")
    _auto_report(args, args.out)
    diverged = diverged_runs(comparison, args.out)
    if diverged:  # after everything is written: the other runs' results stand
        print(f"error: {diverged}", file=sys.stderr)
        return EXIT_DIVERGED
    return 0


def _cmd_stream(args: argparse.Namespace) -> int:
    from .report.tables import stream_table
    from .runs.config import StreamConfig
    from .runs.folders import claim_new_run, default_stream_folder
    from .runs.settings import STREAM_FLAGS, route_settings
    from .runs.setup import prepare
    from .runs.stream import run_stream
    from .scenarios import get_stream_benchmark

    settings = {k: getattr(args, k) for k in STREAM_FLAGS if getattr(args, k) is not None}
    benchmark = get_stream_benchmark(settings.get("benchmark", "slowly-changing-regression"))
    settings = route_settings(args.settings, settings.get("method", "naive"), settings,
                              benchmark)
    config = StreamConfig.from_dict(settings)
    resolved, _ = prepare(config)
    out = args.out or default_stream_folder(resolved)
    console = _console()
    with claim_new_run(out, overwrite=args.overwrite, resumable=False):
        console.print(f"[bold]{resolved.method}[/] on [bold]{resolved.benchmark}[/] "
                      f"({resolved.tasks} tasks, batch {resolved.batch_size}, "
                      f"{'boundaries announced' if resolved.boundaries else 'task-free'}), "
                      f"seed {resolved.seed} -> {out}")
        result = _reporting(args, out, lambda: run_stream(config, out,
                                                          progress=not args.quiet))
        console.print(stream_table(result.summary()))
        console.print(f"wrote {out}/summary.json, config.yaml, metrics.jsonl")
        _auto_report(args, out)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .runs.grid import run_demo

    run_demo(Path(args.out), _int_list(args.seeds, "--seeds"), jobs=args.jobs)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report.html import write_report

    print(f"wrote {write_report(args.folder)}")
    return 0


def _reporting(args: argparse.Namespace, out: str | Path, start: Callable[[], Any]) -> Any:
    """`start()`'s result; a run that diverged still gets its report.html (a banner says so)."""
    try:
        return start()
    except DivergedError:
        _auto_report(args, out)
        raise


def _auto_report(args: argparse.Namespace, out: str | Path) -> None:
    """report.html at the end of run/compare/stream, once the results are saved: a report that
    fails is a warning, never an error that would hide them."""
    if args.no_report:
        return
    try:
        from .report.html import write_report

        print(f"wrote {write_report(out)}")
    except Exception as error:  # noqa: BLE001 - the results are on disk; say so and go on
        print(f"warning: report.html not written ({type(error).__name__}: {error}); the results "
              f"are saved in {out}; try again with: lifelong report {out}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
