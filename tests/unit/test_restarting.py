"""A stage that dies is restarted with a doubling backoff; one that keeps dying stops the daemon (its error is
raised to the supervisor); a stop signal ends the waiting at once."""

from __future__ import annotations

import asyncio
import time

import pytest

from dispatcher.service import MAX_RESTARTS, restarting


class Stage:
    """Dies `deaths` times, then returns; counts its runs."""

    def __init__(self, deaths: int) -> None:
        self.deaths = deaths
        self.runs = 0
        self.ran = asyncio.Event()

    async def run(self) -> None:
        self.runs += 1
        self.ran.set()
        if self.runs <= self.deaths:
            raise RuntimeError(f"death {self.runs}")


async def test_a_stage_that_dies_twice_is_restarted_and_finishes() -> None:
    """Two deaths, two restarts after 10 ms and 20 ms, then the stage's own return ends the supervision."""
    stage = Stage(deaths=2)
    started = time.monotonic()
    await restarting("Stage.run", stage.run, asyncio.Event(), first_delay=0.01)
    assert stage.runs == 3
    assert time.monotonic() - started >= 0.03


async def test_a_stage_that_keeps_dying_stops_the_daemon() -> None:
    """After MAX_RESTARTS restarts within the window, the next death is raised (the daemon then stops, exit 1)."""
    stage = Stage(deaths=100)
    with pytest.raises(RuntimeError, match=f"death {MAX_RESTARTS + 1}$"):
        await restarting("Stage.run", stage.run, asyncio.Event(), first_delay=0.001)
    assert stage.runs == MAX_RESTARTS + 1


async def test_stopping_ends_the_backoff_without_a_restart() -> None:
    """A death during shutdown is raised as it is (no restart), and a stop during the backoff ends it quietly."""
    stopping = asyncio.Event()
    stopping.set()
    stage = Stage(deaths=1)
    with pytest.raises(RuntimeError):
        await restarting("Stage.run", stage.run, stopping)
    assert stage.runs == 1

    stopping = asyncio.Event()
    stage = Stage(deaths=1)
    waiting = asyncio.create_task(restarting("Stage.run", stage.run, stopping, first_delay=60.0))
    await stage.ran.wait()
    stopping.set()
    await asyncio.wait_for(waiting, 5)
    assert stage.runs == 1
