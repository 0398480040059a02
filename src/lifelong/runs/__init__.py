"""Runs end to end, as the command line starts them: a run's configuration (`config`), the set-up
every run shares (`setup`), a task-by-task experiment (`experiment`), an online run on a stream
(`stream`), grids of runs with their summary (`grid`: compare, sweep, demo) and the settings the
command line routes into them (`settings`)."""
