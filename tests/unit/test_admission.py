"""Admission: a bounded line in front of a fixed number of slots."""

from __future__ import annotations

import anyio
import pytest

from app.api.admission import Admission
from app.core.errors import ServiceBusy


def test_waits_for_a_slot_then_refuses_past_the_wait() -> None:
    async def main() -> None:
        gate = Admission(slots=1, max_wait_s=0.2, max_queued=10, retry_after_s=3)
        async with gate.slot():
            with pytest.raises(ServiceBusy) as busy:
                async with gate.slot():
                    pass
            assert busy.value.retry_after_s == 3 and busy.value.status_code == 503
        async with gate.slot():  # the slot came back
            pass
        assert gate.waiting == 0

    anyio.run(main)


def test_a_full_line_is_refused_at_once() -> None:
    async def main() -> None:
        gate = Admission(slots=1, max_wait_s=5, max_queued=1, retry_after_s=1)
        refused: list[ServiceBusy] = []

        async def second() -> None:
            async with gate.slot():
                pass

        async with anyio.create_task_group() as tg, gate.slot():
            tg.start_soon(second)
            await anyio.sleep(0.05)  # second now waits in the line
            with anyio.fail_after(1):
                try:
                    async with gate.slot():
                        pass
                except ServiceBusy as exc:
                    refused.append(exc)
        assert len(refused) == 1 and gate.waiting == 0

    anyio.run(main)
