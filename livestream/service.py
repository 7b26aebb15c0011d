"""Process entry for the asyncio services: one place that turns a failed start into a clear exit."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiokafka.errors import KafkaError

from livestream.errors import LivestreamError


def run_service(name: str, main: Callable[[], Awaitable[None]]) -> int:
    """Run ``main`` to completion; exit status 0 on a clean stop, 2 on a known failure.

    Known failures (bad settings, a missing model, an unreachable broker) are logged once,
    here, as one readable line instead of a traceback.
    """
    try:
        asyncio.run(main())  # type: ignore[arg-type]
    except (LivestreamError, KafkaError) as exc:
        logging.getLogger(name).error("%s stopped: %s", name, exc)
        return 2
    return 0
