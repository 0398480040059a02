"""A progress bar showing task, epoch, loss and speed (rich), updated a few times a second."""

from __future__ import annotations

import sys
import time

from torch import Tensor


class Progress:
    """Throttled progress display; a no-op when disabled or when stderr is not a terminal."""

    def __init__(self, enabled: bool = True, *, label: str = "", num_tasks: int = 0) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.label = label
        self.num_tasks = num_tasks
        self._bar = None
        self._task = None
        self._next_update = 0.0

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]}"),
                TimeElapsedColumn(), console=Console(stderr=True), transient=True)
            self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
            self._bar = None

    def start_task(self, task: int, total_steps: int) -> None:
        self._started = time.perf_counter()
        self._header = f"{self.label}task {task + 1}/{self.num_tasks}"
        if self._bar is not None:
            if self._task is not None:
                self._bar.remove_task(self._task)
            self._task = self._bar.add_task(self._header, total=total_steps, loss="-", speed="")

    def update(self, step: int, epoch: int, epochs: int | None, loss_sum: Tensor,
               steps_in_epoch: int) -> None:
        """Called every step; redraws at most ~5 times a second (reading the loss syncs)."""
        if self._bar is None:
            return
        now = time.perf_counter()
        if now < self._next_update:
            return
        self._next_update = now + 0.2
        loss = float(loss_sum) / max(steps_in_epoch, 1)
        speed = step / max(now - self._started, 1e-9)
        epoch_text = f" · epoch {epoch}/{epochs}" if epochs else ""
        self._bar.update(self._task, completed=step, description=self._header + epoch_text,
                         loss=f"{loss:.4f}", speed=f"{speed:,.0f} it/s")
