"""Online (streaming) continual learning: task-free streams, batch-1 training, online metrics."""

from .benchmarks import STREAM_BENCHMARKS, get_stream_benchmark, list_stream_benchmarks
from .run import StreamConfig, StreamResult, prepare_stream, run_stream
from .streams import (
    LTUTarget,
    Stream,
    label_permuted_images,
    permuted_images,
    slowly_changing_regression,
)
from .trainer import StreamBin, StreamStats, train_stream

__all__ = [
    "LTUTarget",
    "STREAM_BENCHMARKS",
    "Stream",
    "StreamBin",
    "StreamConfig",
    "StreamResult",
    "StreamStats",
    "get_stream_benchmark",
    "label_permuted_images",
    "list_stream_benchmarks",
    "permuted_images",
    "prepare_stream",
    "run_stream",
    "slowly_changing_regression",
    "train_stream",
]
