"""User-facing errors.

Every problem a user can fix (bad name, value out of range, missing data file) raises a subclass of
`LifelongError`; the command line prints its message on one line and exits with status 2, without a
traceback. Messages say what was wrong and what is accepted. A run that diverges (non-finite loss
or weights) raises `DivergedError`, also one line, exit status 3.
"""

from __future__ import annotations


class LifelongError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""


class ConfigError(LifelongError, ValueError):
    """An unknown name, a value out of range, or an impossible combination."""


class DataError(LifelongError):
    """A data file is missing, corrupt or could not be downloaded."""


class DivergedError(LifelongError):
    """Training produced a non-finite loss or non-finite weights, so the run stopped (the command
    line exits with status 3). `quantity` is "loss" or "weights of layer NAME"; `task` the task
    id (None where the loop does not know it, e.g. `train_task` on its own); `step` the 1-based
    step at which it was seen (None: at the end of the task), `first_step` the first step it may
    have happened at when the check could not look at every step (a GPU is not made to wait on
    each one), `total_steps` the steps of the task. `note` ends the message (what was kept);
    `summary` is the run's summary.json, with `"status": "diverged"`, once the run wrote it."""

    summary: dict[str, object] | None = None

    def __init__(self, quantity: str, *, task: int | None = None, step: int | None = None,
                 first_step: int | None = None, total_steps: int | None = None,
                 note: str = "") -> None:
        super().__init__(quantity)
        self.quantity, self.task, self.step = quantity, task, step
        self.first_step, self.total_steps, self.note = first_step, total_steps, note

    def where(self) -> str:
        """`task 2, step 37 of 118`, `task 2, steps 31-37 of 118` or `the end of task 2`."""
        task = "" if self.task is None else f"task {self.task}"
        if self.step is None:
            return f"the end of {task or 'the task'}"
        of = "" if self.total_steps is None else f" of {self.total_steps}"
        steps = (f"step {self.step}" if self.first_step in (None, self.step)
                 else f"a step in {self.first_step}-{self.step}")
        return f"{task + ', ' if task else ''}{steps}{of}"

    def record(self) -> dict[str, object]:
        """The divergence as summary.json and metrics.jsonl hold it."""
        return {"quantity": self.quantity, "task": self.task, "step": self.step,
                "first_step": self.first_step, "total_steps": self.total_steps}

    def __str__(self) -> str:
        return f"diverged: non-finite {self.quantity} at {self.where()}{self.note}"
