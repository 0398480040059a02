"""Task sequences, in two forms: scenarios of tasks with test sets (builders for in-memory
datasets, the named benchmarks) and streams, seen once in order (online learning)."""

from .benchmarks import BENCHMARKS, Benchmark, Protocol, get_benchmark, list_benchmarks
from .permuted import permuted_inputs, permuted_labels
from .rotated import rotated_inputs
from .split import split_by_classes, split_scenario
from .stream_benchmarks import (
    STREAM_BENCHMARKS,
    StreamBenchmark,
    StreamProtocol,
    get_stream_benchmark,
    list_stream_benchmarks,
)
from .streams import (
    LTUTarget,
    Stream,
    label_permuted_images,
    permuted_images,
    slowly_changing_regression,
)
from .task import Scenario, Task

__all__ = ["BENCHMARKS", "STREAM_BENCHMARKS", "Benchmark", "LTUTarget", "Protocol", "Scenario",
           "Stream", "StreamBenchmark", "StreamProtocol", "Task", "get_benchmark",
           "get_stream_benchmark", "label_permuted_images", "list_benchmarks",
           "list_stream_benchmarks", "permuted_images", "permuted_inputs", "permuted_labels",
           "rotated_inputs", "slowly_changing_regression", "split_by_classes", "split_scenario"]
