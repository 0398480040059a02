"""Task sequences: builders for in-memory datasets and the named benchmarks."""

from .benchmarks import BENCHMARKS, Benchmark, Protocol, get_benchmark, list_benchmarks
from .builders import (
    permuted_inputs,
    permuted_labels,
    rotated_inputs,
    split_by_classes,
    split_scenario,
)
from .task import Scenario, Task

__all__ = ["BENCHMARKS", "Benchmark", "Protocol", "Scenario", "Task", "get_benchmark",
           "list_benchmarks", "permuted_inputs", "permuted_labels", "rotated_inputs",
           "split_by_classes", "split_scenario"]
