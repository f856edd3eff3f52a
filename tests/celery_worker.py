"""Start a real Celery worker process for tests that need one (not an in-thread fake)."""

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def celery_worker(
    *,
    queues: str = "celery",
    database_name: str | None = None,
    concurrency: int = 1,
    extra_env: dict[str, str] | None = None,
):
    """Run ``celery -A config worker`` against the same Redis (and, if given, the same test
    database) as the tests; stop it on exit. ``extra_env`` adds or overrides environment
    variables of the worker (e.g. settings read from the environment)."""
    env = dict(os.environ)
    env.update(extra_env or {})
    if database_name:
        from django.conf import settings

        db = settings.DATABASES["default"]
        env["DATABASE_URL"] = (
            f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{database_name}"
        )
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel", "INFO",
            "--concurrency", str(concurrency), "--queues", queues, "--without-gossip",
            "--without-mingle", "--hostname", f"test-{os.getpid()}@%h",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_until(predicate, *, timeout: float = 30.0, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    return predicate()
