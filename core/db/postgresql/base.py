"""PostgreSQL backend: Django's, with the per-request health check skipped for a connection
that served a request without error in the last few seconds.

With persistent connections (``CONN_MAX_AGE``) and ``CONN_HEALTH_CHECKS``, Django runs
``SELECT 1`` before the first query of every request: one more round trip to the server
on each request, which on the payment API (BEGIN, two statements, COMMIT per payment) would
be one round trip in five. Here a connection that finished its last request without a database error
less than ``DATABASE_HEALTH_CHECK_INTERVAL`` seconds ago (default 5) is taken as usable, as
PgBouncer's ``server_check_delay`` does for its pool; an idle one is checked as before. A
connection that dies within that interval (the server restarted) fails one request, which
is what Django does without health checks; Django then drops it at the end of that request
(``errors_occurred``) and the next request connects anew."""

import time

from django.conf import settings
from django.db.backends.postgresql import base

DEFAULT_INTERVAL = 5.0


class DatabaseWrapper(base.DatabaseWrapper):
    # monotonic time when the connection last finished a request in which it ran statements
    # without error (or connected, or passed a health check)
    _known_good_at: float | None = None
    _used = False

    def connect(self):
        super().connect()
        self._known_good_at = time.monotonic()

    def close_if_health_check_failed(self):
        if (
            self.connection is not None
            and self.health_check_enabled
            and not self.health_check_done
            and self._known_good_at is not None
            and time.monotonic() - self._known_good_at < _interval()
        ):
            self.health_check_done = True
            return
        super().close_if_health_check_failed()
        if self.connection is not None:
            self._known_good_at = time.monotonic()

    def create_cursor(self, name=None):
        self._used = True
        return super().create_cursor(name)

    def close_if_unusable_or_obsolete(self):
        # Called at the start and the end of every request: only a request that ran statements
        # without error (or whose connection passed the check here) says the connection works.
        super().close_if_unusable_or_obsolete()
        worked = self._used or self.health_check_done
        if self.connection is not None and worked and not self.errors_occurred:
            self._known_good_at = time.monotonic()
        self._used = False

    def close(self):
        self._known_good_at = None
        super().close()


def _interval() -> float:
    return float(getattr(settings, "DATABASE_HEALTH_CHECK_INTERVAL", DEFAULT_INTERVAL))
