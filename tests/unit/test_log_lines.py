"""The API's log lines (app/observability/logging.py): on the event loop's thread a turn's
lines are written together at the start of the next turn, never lost, never reordered;
a warning, another thread's line, or the end of serving writes at once."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest

from app.observability.logging import TurnHandler, configure_logging, lines_per_turn


class Writes(io.StringIO):
    """A text stream that remembers each write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


@pytest.fixture
def stream() -> Iterator[Writes]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out = Writes()
    configure_logging("api", "json", stream=out)
    try:
        yield out
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def events(out: Writes) -> list[str]:
    return [json.loads(line)["event"] for line in out.getvalue().splitlines()]


def test_a_turns_lines_are_one_write_at_the_next_turn(stream: Writes) -> None:
    log = logging.getLogger("trainery.api")
    seen: dict[str, list[str]] = {}

    async def serve() -> None:
        with lines_per_turn(asyncio.get_running_loop()):
            for i in range(3):
                log.info(f"request {i}")
            seen["in the turn"] = events(stream)
            await asyncio.sleep(0)
            seen["next turn"] = events(stream)
            log.info("request 3")
            log.warning("slow")  # at once, after the line that waits
            seen["warning"] = events(stream)
            log.info("request 4")
        seen["stopped"] = events(stream)  # the end of serving writes what waits

    asyncio.run(serve())
    assert seen["in the turn"] == []
    assert seen["next turn"] == ["request 0", "request 1", "request 2"]
    assert seen["warning"] == [*seen["next turn"], "request 3", "slow"]
    assert seen["stopped"] == [*seen["warning"], "request 4"]
    assert stream.writes[0].count("\n") == 3  # one write for the first turn's three lines
    handler = next(h for h in logging.getLogger().handlers if isinstance(h, TurnHandler))
    assert handler.loop is None and not handler.waiting


def test_another_threads_line_is_written_at_once_after_the_waiting_ones(
        stream: Writes) -> None:
    log = logging.getLogger("trainery.api")
    seen: list[str] = []

    async def serve() -> None:
        with lines_per_turn(asyncio.get_running_loop()):
            log.info("on the loop")
            worker = threading.Thread(target=log.info, args=("in a thread",))
            worker.start()
            worker.join()
            seen.extend(events(stream))

    asyncio.run(serve())
    assert seen == ["on the loop", "in a thread"]


def test_outside_a_loop_every_line_is_written_at_once(stream: Writes) -> None:
    logging.getLogger("trainery.api").info("alone")
    assert events(stream) == ["alone"] and len(stream.writes) == 1
