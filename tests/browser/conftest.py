"""Fixtures for tests that drive a real headless Chromium against ``live_server``.

Playwright's sync API runs an asyncio event loop in the test thread, and Django refuses
database access from a thread with a running loop (SynchronousOnlyOperation). The test
thread only creates fixtures and reads rows between page interactions, never concurrently
with a request, so the guard is relaxed for this package.
"""

import os

import pytest

os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Generous for a loaded CI box, far below Playwright's 30 s default so failures are quick.
TIMEOUT_MS = 10_000


# Module scope, not session: Playwright's sync API keeps an event loop running in this
# thread while it is alive, and later tests call asyncio.run() (the head-end adapter).
@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    context = browser.new_context(locale="zh-CN", viewport={"width": 1280, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """Each test creates a dozen staff users and signs one in; PBKDF2 at production strength
    costs seconds per test. The live server thread shares these settings."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
