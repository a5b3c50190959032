"""A running job's database writes outlast a brief outage of the database (a restart, a failover).

Without this, the first event written while PostgreSQL restarts raises out of the library and fails a
job that had nothing wrong with it. Every write is fenced by the lease, so retrying it late is safe: once
the reaper has given the job to another attempt, the retried write matches no row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError

from moecomp.persistence.database import is_transient

log = logging.getLogger(__name__)
T = TypeVar("T")

# A database restart takes seconds; past this the job fails like any other error (and the reaper re-queues it
# if even that cannot be written).
OUTAGE_S = 60.0
FIRST_DELAY_S, MAX_DELAY_S = 0.2, 2.0


def retrying(
    write: Callable[[], T],
    within_s: float = OUTAGE_S,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """``write()``, called again after a transient database error until ``within_s`` has passed.

    ``write`` must open its own session, so that each try starts on a fresh (pre-pinged) connection.
    """
    deadline = clock() + within_s
    delay = FIRST_DELAY_S
    while True:
        try:
            return write()
        except DBAPIError as exc:
            if not is_transient(exc) or clock() + delay > deadline:
                raise
            log.warning("database unreachable (%s); retrying in %.1f s", type(exc.orig).__name__, delay)
        sleep(delay)
        delay = min(MAX_DELAY_S, 2 * delay)
