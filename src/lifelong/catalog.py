"""What `lifelong list` shows: the methods, benchmarks, streaming benchmarks and models, and with
`--verbose` every setting `--set` takes: each method's (`ewc.lambda`) and each benchmark's
(`benchmark.num_tasks`), with its type, default and help."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table


def _table(title: str, key: str, rows: Mapping[str, tuple[str, ...]], *extra: str) -> Table:
    result = Table(title=title)
    result.add_column(key, style="bold")
    for column in ("description", *extra):
        result.add_column(column)
    for name, cells in rows.items():
        result.add_row(name, *cells)
    return result


def settings_table(title: str, rows: Sequence[tuple[str, str, Any, str]], owner: str) -> Table:
    """`Config.describe()` rows as `--set` takes them: `owner.KEY`, type, default, help."""
    table = Table(title=title)
    table.add_column("key", no_wrap=True)
    for column in ("type", "default", "help"):
        table.add_column(column)
    for key, type_name, default, help_text in rows:
        table.add_row(f"{owner}.{key}", type_name, repr(default), help_text)
    return table


def benchmark_settings(registry: Mapping[str, Any]) -> list[tuple[list[str], list[tuple]]]:
    """([benchmark names], their settings' rows) for each distinct set of settings in
    `registry` (name -> a benchmark with an `options` Config): benchmarks that share their
    options (every split benchmark) share one table."""
    groups: dict[str, tuple[list[str], list[tuple]]] = {}
    for name in sorted(registry):
        rows = registry[name].options.describe()
        groups.setdefault(repr(rows), ([], rows))[0].append(name)
    return [group for group in groups.values() if group[1]]


def print_catalog(console: Console, verbose: bool = False) -> None:
    """Everything `lifelong list` prints (see the module docstring)."""
    from .core.registry import get_method_class, list_aliases, list_methods
    from .models import HF_MODELS, MODELS
    from .scenarios import BENCHMARKS, STREAM_BENCHMARKS, list_stream_benchmarks

    methods = {n: (d,) for n, d in list_methods().items()}
    methods.update({n: (f"= {spec}",) for n, spec in list_aliases().items()})
    console.print(_table("methods (combine with '+', e.g. replay+ewc)", "method",
                         dict(sorted(methods.items()))))
    console.print(_table("benchmarks", "benchmark",
                         {n: (BENCHMARKS[n].description, BENCHMARKS[n].default_scenario)
                          for n in sorted(BENCHMARKS)}, "default scenario"))
    console.print(_table("streaming benchmarks (lifelong stream)", "benchmark",
                         {n: (d,) for n, d in list_stream_benchmarks().items()}))
    console.print("models: " + "; ".join(f"[bold]{k}[/]: {v}" for k, v in MODELS.items())
                  + f"; {HF_MODELS}")
    if not verbose:
        return
    for name in list_methods():
        rows = get_method_class(name).Config.describe()
        if rows:
            console.print(settings_table(f"{name} settings (--set {name}.KEY=VALUE)", rows, name))
    for kind, registry in (("", BENCHMARKS), ("streaming ", STREAM_BENCHMARKS)):
        for names, rows in benchmark_settings(registry):
            console.print(settings_table(f"{', '.join(names)}: {kind}benchmark settings "
                                         "(--set benchmark.KEY=VALUE)", rows, "benchmark"))
