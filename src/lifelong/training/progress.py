"""Progress of a run on stderr, with the time left for the task and for the whole run.

On a terminal: a live bar (rich) with the loss, the speed, the elapsed time and both ETAs; each
finished task leaves one line above it (`task 2/5 done in 12.3 s · loss 0.4120 · ACC so far
0.910 · run 40% · ETA 0:01:10`), so the bar never vanishes without a trace. Elsewhere (a file, a
CI log): one plain line every 10% of the run or every 30 s, whichever comes first, and the same
line at each task's end. `enabled=False` (`--quiet`) prints nothing.

The run's total is known in steps (a stream's samples give it exactly; a task run estimates the
tasks still to come by the mean steps of those started so far), and the ETAs extrapolate the rate
so far (`eta_seconds`), evaluation time included. The call made at every step is a comparison
and a clock read; the rest runs a few times a second at most.
"""

from __future__ import annotations

import math
import sys
import time

from torch import Tensor

PLAIN_EVERY_SECONDS = 30.0  # a plain line at least this often ...
PLAIN_EVERY_FRACTION = 0.1  # ... and at every tenth of the run
REDRAW_SECONDS = 0.2  # the terminal bar's refresh


def eta_seconds(elapsed: float, done: float, total: float) -> float | None:
    """Seconds left when `done` of `total` units took `elapsed` seconds, at the same rate;
    None before any unit is done (no rate to go by)."""
    if done <= 0:
        return None
    return elapsed * max(total - done, 0.0) / done


def format_duration(seconds: float | None) -> str:
    """`0:42`, `12:05` or `1:02:03`; `?` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """The progress of one run (see the module docstring); `total_steps`: the run's steps when
    known in advance (a stream), else estimated task by task."""

    def __init__(self, enabled: bool = True, *, label: str = "", num_tasks: int = 0,
                 total_steps: int | None = None) -> None:
        self.enabled = enabled
        self.live = enabled and sys.stderr.isatty()
        self.label = label
        self.num_tasks = num_tasks
        self.total_steps = total_steps
        self._bar = None
        self._task = None
        self._run_started = self._started = time.perf_counter()
        self._finished_steps = 0  # steps of the tasks finished (in this process)
        self._tasks_started = 0
        self._task_index = 0
        self._total = 0  # steps of the current task
        self._step = 0
        self._next_step: float = math.inf  # update() acts at this step of the task ...
        self._next_time: float = math.inf  # ... or at this time, whichever comes first
        self._next_mark = 0.0  # the run's next tenth, in steps of the run

    def __enter__(self) -> Progress:
        self._run_started = time.perf_counter()
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as Bar

            self._bar = Bar(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]}"),
                TimeElapsedColumn(), TextColumn("{task.fields[eta]}"),
                console=Console(stderr=True), transient=True)
            self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
            self._bar = None

    # --- the run's arithmetic ------------------------------------------------------------------
    def run_total(self) -> float:
        """The run's steps (in this process): given, or the tasks finished, the current one and
        those to come at the mean steps per task so far."""
        if self.total_steps is not None:
            return float(self.total_steps)
        known = self._finished_steps + self._total
        to_come = max(self.num_tasks - self._task_index - 1, 0)
        return known + to_come * known / max(self._tasks_started, 1)

    def etas(self, now: float) -> tuple[float | None, float | None]:
        """(the task's ETA, the run's ETA) in seconds at the current step."""
        task = eta_seconds(now - self._started, self._step, self._total)
        run = eta_seconds(now - self._run_started, self._finished_steps + self._step,
                          self.run_total())
        return task, run

    def _schedule(self, now: float) -> None:
        """When update() acts next: the bar's redraw, or the next plain line."""
        if not self.enabled:
            self._next_step = self._next_time = math.inf
        elif self.live:
            self._next_step, self._next_time = math.inf, now + REDRAW_SECONDS
        else:
            self._next_step = self._next_mark - self._finished_steps
            self._next_time = now + PLAIN_EVERY_SECONDS

    def _advance_mark(self) -> None:
        """The next plain line by steps: a tenth of the run after the last line."""
        tenth = max(self.run_total() * PLAIN_EVERY_FRACTION, 1.0)
        self._next_mark = self._finished_steps + self._step + tenth

    # --- the calls of the training loops -------------------------------------------------------
    def start_task(self, task: int, total_steps: int) -> None:
        now = time.perf_counter()
        self._started = now
        self._task_index, self._total, self._step = task, total_steps, 0
        self._tasks_started += 1
        self._header = f"{self.label}task {task + 1}/{self.num_tasks}"
        self._advance_mark()
        self._schedule(now)
        if self._bar is not None:
            if self._task is not None:
                self._bar.remove_task(self._task)
            self._task = self._bar.add_task(self._header, total=total_steps, loss="-", speed="",
                                            eta="")

    def update(self, step: int, epoch: int, epochs: int | None, loss_sum: Tensor,
               steps_in_epoch: int) -> None:
        """Called every step (`step` of the task, from 1); acts only when scheduled (reading the
        loss syncs the device)."""
        if step < self._next_step and time.perf_counter() < self._next_time:
            return
        now = time.perf_counter()
        self._step = step
        if not self.live and step >= self._total:  # the task's end line follows
            self._next_step = math.inf
            return
        loss = float(loss_sum) / max(steps_in_epoch, 1)
        speed = step / max(now - self._started, 1e-9)
        epoch_text = f" · epoch {epoch}/{epochs}" if epochs else ""
        task_eta, run_eta = self.etas(now)
        if self._bar is not None:
            self._bar.update(self._task, completed=step, description=self._header + epoch_text,
                             loss=f"{loss:.4f}", speed=f"{speed:,.0f} it/s",
                             eta=f"ETA {format_duration(task_eta)} · run "
                                 f"{format_duration(run_eta)}")
        else:
            self._say(f"{self._header} · step {step}/{self._total}{epoch_text} · loss "
                      f"{loss:.4f} · {speed:,.0f} it/s · {self._run_text(now, run_eta)} · task "
                      f"ETA {format_duration(task_eta)}")
            self._advance_mark()
        self._schedule(now)

    def end_task(self, *facts: str) -> None:
        """The task's line: its time, `facts` (`loss 0.4120`, `ACC so far 0.910`), the run's
        share done and ETA; kept above the bar on a terminal."""
        now = time.perf_counter()
        if self._bar is not None:  # full until the next task's bar replaces it
            self._bar.update(self._task, completed=self._total, eta="")
        self._finished_steps += self._total
        self._step = self._total = 0
        done = " · ".join((f"{self._header} done in {now - self._started:.1f} s", *facts))
        run_eta = eta_seconds(now - self._run_started, self._finished_steps, self.run_total())
        self._say(f"{done} · {self._run_text(now, run_eta)}")
        self._advance_mark()
        self._schedule(now)

    def _run_text(self, now: float, run_eta: float | None) -> str:
        share = (self._finished_steps + self._step) / max(self.run_total(), 1.0)
        return (f"run {min(share, 1.0):.0%} · elapsed {format_duration(now - self._run_started)}"
                f" · ETA {format_duration(run_eta)}")

    def _say(self, line: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.console.print(line, highlight=False, markup=False)
        else:
            print(line, file=sys.stderr, flush=True)


class GridProgress:
    """The runs of a grid finishing in worker processes: one line per finished run, with the runs
    done and the grid's ETA, kept above a bar on a terminal; nothing when disabled."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled = enabled
        self.total = total
        self.done = 0
        self._bar = None
        self._started = time.perf_counter()

    def __enter__(self) -> GridProgress:
        self._started = time.perf_counter()
        if self.enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TimeElapsedColumn
            from rich.progress import Progress as Bar

            self._bar = Bar("runs", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            "{task.description}", console=Console(stderr=True), transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task("", total=self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
            self._bar = None

    def advance(self, method: str, seed: int) -> None:
        """Run (`method`, `seed`) has finished."""
        self.done += 1
        elapsed = time.perf_counter() - self._started
        eta = format_duration(eta_seconds(elapsed, self.done, self.total))
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=f"ETA {eta}")
            self._bar.console.print(self._line(method, seed, elapsed, eta), highlight=False,
                                    markup=False)
        elif self.enabled:
            print(self._line(method, seed, elapsed, eta), file=sys.stderr, flush=True)

    def _line(self, method: str, seed: int, elapsed: float, eta: str) -> str:
        return (f"run {self.done}/{self.total} done: {method} seed {seed} · elapsed "
                f"{format_duration(elapsed)} · ETA {eta}")
