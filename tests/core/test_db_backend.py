"""The PostgreSQL backend (core.db.postgresql): Django's per-request health check (``SELECT 1``)
is skipped for a connection that finished a request without error within
DATABASE_HEALTH_CHECK_INTERVAL seconds, still runs on an idle one, and a connection the server
dropped is replaced (after the interval: by the check, before the request's own statements;
within it: the request fails, as without health checks, and the next one reconnects)."""

import time

import psycopg
import pytest
from django.core.signals import request_finished, request_started
from django.db import OperationalError, connection

from core.db.postgresql.base import DatabaseWrapper

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def checks(monkeypatch):
    """Counts the health checks' ``SELECT 1`` (sent on the raw psycopg cursor)."""
    seen = {"n": 0}
    execute = psycopg.ClientCursor.execute

    def counting(self, query, *args, **kwargs):
        if str(query).strip() == "SELECT 1":
            seen["n"] += 1
        return execute(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.ClientCursor, "execute", counting)
    return seen


def request(sql="SELECT 2"):
    """What a request does with the database, between the signals Django sends around it."""
    request_started.send(sender=None)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchone()[0]
    finally:
        request_finished.send(sender=None)


@pytest.fixture
def persistent(settings):
    """Persistent connections with health checks, as the product runs on PostgreSQL."""
    saved = (connection.settings_dict["CONN_MAX_AGE"], connection.settings_dict["CONN_HEALTH_CHECKS"])
    connection.close()
    connection.settings_dict["CONN_MAX_AGE"] = 60
    connection.settings_dict["CONN_HEALTH_CHECKS"] = True
    yield settings
    connection.close()
    connection.settings_dict["CONN_MAX_AGE"], connection.settings_dict["CONN_HEALTH_CHECKS"] = saved


def test_the_engine_is_ours():
    assert connection.settings_dict["ENGINE"] == "core.db.postgresql"
    assert isinstance(connection._connections[connection._alias], DatabaseWrapper)


def test_a_busy_connection_is_not_checked_before_every_request(persistent, checks):
    persistent.DATABASE_HEALTH_CHECK_INTERVAL = 5.0
    for _ in range(5):
        assert request() == 2
    assert checks["n"] == 0  # connected by the first request, used by every one since


def test_with_the_interval_at_zero_every_request_is_checked_as_in_django(persistent, checks):
    persistent.DATABASE_HEALTH_CHECK_INTERVAL = 0
    for _ in range(5):
        assert request() == 2
    assert checks["n"] == 4  # not the first: it connected


def test_an_idle_connection_is_checked_again(persistent, checks):
    persistent.DATABASE_HEALTH_CHECK_INTERVAL = 0.3
    assert request() == 2
    assert request() == 2
    assert checks["n"] == 0
    time.sleep(0.4)
    assert request() == 2
    assert checks["n"] == 1
    assert request() == 2
    assert checks["n"] == 1  # good again from that request on


def test_a_request_that_ran_no_statement_does_not_vouch_for_the_connection(persistent, checks):
    persistent.DATABASE_HEALTH_CHECK_INTERVAL = 0.3
    assert request() == 2
    time.sleep(0.4)
    for _ in range(3):  # requests that never touch the database (static files, a redirect)
        request_started.send(sender=None)
        request_finished.send(sender=None)
    assert request() == 2
    assert checks["n"] == 1


def _kill_our_backend():
    pid = connection.connection.info.backend_pid
    with psycopg.connect(_dsn(), autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [pid])
    for _ in range(50):  # until the server has really gone
        with psycopg.connect(_dsn(), autocommit=True) as other:
            if not other.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone():
                return
        time.sleep(0.05)


def _dsn():
    s = connection.settings_dict
    return f"host={s['HOST'] or '127.0.0.1'} port={s['PORT'] or 5432} user={s['USER']} dbname={s['NAME']}"


def test_a_dropped_idle_connection_is_replaced_before_the_request_runs(persistent, checks):
    persistent.DATABASE_HEALTH_CHECK_INTERVAL = 0.3
    assert request() == 2
    first = connection.connection.info.backend_pid
    _kill_our_backend()
    time.sleep(0.4)
    assert request("SELECT 3") == 3  # the check saw it dead, a new connection served the request
    assert checks["n"] == 1
    assert connection.connection.info.backend_pid != first


def test_a_connection_dropped_within_the_interval_fails_one_request_then_reconnects(persistent, checks):
    persistent.DATABASE_HEALTH_CHECK_INTERVAL = 60
    assert request() == 2
    first = connection.connection.info.backend_pid
    _kill_our_backend()
    with pytest.raises(OperationalError):
        request()
    # Django closed it at the end of the failed request (errors_occurred); the next connects
    assert request("SELECT 4") == 4
    assert connection.connection.info.backend_pid != first
    assert checks["n"] == 0
