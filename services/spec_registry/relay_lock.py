"""Which registry relays the outbox: one at a time, among every registry sharing a PostgreSQL database.

Several registries may serve the API against one PostgreSQL (docs/kubernetes.md, "High availability");
the outbox rows are shared, so two relays would both publish every event (JetStream's duplicate window
would drop the copies, but only within its window, and in no fixed order). The relay that holds a
session-level advisory lock (`pg_try_advisory_lock`) on a connection of its own relays; the others try
again at every poll. The lock belongs to that session: when the holder stops (it releases it), or dies
(its connection closes: at once for a killed process, after the TCP keepalives below for a vanished
host), PostgreSQL frees it and the next try elsewhere takes it.

SQLite is one registry's file: there is no one to share with, and the lock is always held.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from libs.logging import get_logger

log = get_logger("spec_registry")

# A fixed key every berth registry agrees on ("berth-outbox" in 63 bits).
RELAY_LOCK_KEY = int.from_bytes(b"brthoutb", "big") & (2**63 - 1)
# The server notices a holder whose host vanished (no FIN) after about idle + interval x count seconds.
KEEPALIVE = {"tcp_keepalives_idle": 10, "tcp_keepalives_interval": 5, "tcp_keepalives_count": 3}


class RelayLock:
    def __init__(self, url: sa.URL | str) -> None:
        self._url = sa.make_url(url)
        self._engine: sa.Engine | None = None
        self._connection: sa.Connection | None = None

    @property
    def shared(self) -> bool:
        return self._url.get_backend_name() == "postgresql"

    def hold(self) -> bool:
        """True while this registry holds the lock (taking it when free). Blocking: run in a thread."""
        if not self.shared:
            return True
        if self._connection is not None:
            try:
                self._connection.exec_driver_sql("SELECT 1")  # the session lives, so the lock is still ours
                return True
            except sa.exc.DBAPIError:
                log.warning("outbox relay lock lost with its database connection; trying again")
                self.release()
        return self._try_take()

    def _try_take(self) -> bool:
        if self._engine is None:
            # NullPool: closing the connection ends the session (and frees the lock) instead of handing
            # a session that still holds it back to a pool. Autocommit: no idle open transaction.
            self._engine = sa.create_engine(
                self._url, poolclass=NullPool, isolation_level="AUTOCOMMIT",
                connect_args={"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3},
            )  # fmt: skip
        connection = self._engine.connect()
        try:
            for name, value in KEEPALIVE.items():
                connection.exec_driver_sql(f"SET {name} = {int(value)}")
            taken = connection.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": RELAY_LOCK_KEY}).scalar()
        except BaseException:
            connection.close()
            raise
        if not taken:
            connection.close()
            return False
        self._connection = connection
        return True

    def release(self) -> None:
        """Let another registry relay: closing the session frees its advisory lock."""
        if self._connection is not None:
            try:
                self._connection.close()
            except sa.exc.DBAPIError:
                pass  # the session is gone already, and the lock with it
            self._connection = None

    def close(self) -> None:
        self.release()
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
