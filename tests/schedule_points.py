"""Counting what a block of code costs the scheduler, through trio's public instruments."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import trio


@dataclass
class Counts:
    #: Times the current task let the scheduler run (schedule points it went through).
    schedule_points: int = 0
    #: Tasks started by anyone.
    tasks_spawned: int = 0


class _Counter(trio.abc.Instrument):
    def __init__(self, task: trio.lowlevel.Task, counts: Counts) -> None:
        self._task = task
        self._counts = counts

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self._task:
            self._counts.schedule_points += 1

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self._counts.tasks_spawned += 1


@contextmanager
def counting() -> Iterator[Counts]:
    """Count the schedule points of the current task and the tasks spawned in the block."""
    counts = Counts()
    counter = _Counter(trio.lowlevel.current_task(), counts)
    trio.lowlevel.add_instrument(counter)
    try:
        yield counts
    finally:
        trio.lowlevel.remove_instrument(counter)
