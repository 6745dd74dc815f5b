"""Browser fixtures for the back-office pages: a live server, a real worker, Chromium,
users with roles, and a year whose units are synced."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import Server, chromium, login
from tests.support.fixtures import UserFactory, wait_for

SAMPLES = Path(__file__).resolve().parents[2] / "ingestion" / "samples"
PASSWORD = "pw-for-tests"


@pytest.fixture
def server(worker_factory: Any) -> Iterator[Server]:
    # A worker of this test only (stopped before the database is flushed).
    worker_factory("dm-browser")
    srv = Server("dm")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def browser(monkeypatch: Any) -> Iterator[Any]:
    # Playwright's sync API keeps an event loop running in this thread; the ORM calls
    # here are plain blocking test code, not code running inside that loop.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with chromium() as b:
        yield b


def make_staff(username: str, *, perms: tuple[str, ...] = (), modules: tuple[str, ...] = (),
               superuser: bool = False) -> Any:
    """A staff user who can log in with ``PASSWORD``."""
    if superuser:
        return UserFactory(username=username, email=f"{username}@example.org", password=PASSWORD, is_staff=True,
                           is_superuser=True)
    return UserFactory(username=username, perms=perms, modules=modules, password=PASSWORD, is_staff=True)


@pytest.fixture
def open_page(server: Server, browser: Any) -> Callable[..., Any]:
    """A logged-in page at ``path`` that fails the test on any script error."""
    pages: list[tuple[Any, list[str]]] = []

    def open_(username: str, path: str = "/admin/", *, locale: str = "en-US", dark: bool = False) -> Any:
        context = browser.new_context(viewport={"width": 1366, "height": 900}, locale=locale,
                                      color_scheme="dark" if dark else "light")
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        login(page, server.base, username, PASSWORD, next_path=path)
        pages.append((page, errors))
        return page

    yield open_
    for page, errors in pages:
        assert errors == [], f"script errors on {page.url}: {errors}"


@pytest.fixture
def synced_year() -> Callable[[int], Any]:
    """A year created through the service, its units synced without a worker."""

    def make(year: int) -> Any:
        from ingestion import services, unit_sync
        from pipelines.models import Pipeline

        obj, pipeline = services.year_create(year=year, actor=None)
        unit_sync.units_sync_now(year=year)
        # The planned unit_sync pipeline also runs on the test's worker: let it end so
        # the page starts from a quiet year.
        wait_for(lambda: Pipeline.objects.get(pk=pipeline.pk).is_done, timeout=60)
        return obj

    return make


def sample(module: str, target: str) -> Path:
    return SAMPLES / f"{module}_{target}.csv"


def upload_sample(year: int, module: str, target: str) -> Any:
    """Upload a sample through the service (as another operator would) and wait for it."""
    from ingestion import services
    from pipelines.models import Pipeline

    path = sample(module, target)
    with open(path, "rb") as f:
        _, pipeline = services.upload_create(year=year, module=module, target=target, file=f,
                                             filename=path.name, actor=None)
    return wait_for(lambda: Pipeline.objects.get(pk=pipeline.pk).is_done and pipeline, timeout=90)


# What people read on a page, minus what is data: raw JSON, ids and hashes (code),
# file names, user names, the language selector (each language in its own name).
DATA_SELECTORS = ("pre, code, .dm-upload-info strong, #user-tools strong, #sluice-language-select, script, style, "
                  "noscript, [hidden]")


def _english_of_catalogue() -> list[str]:
    """Every English phrase of the French catalogue whose French differs (placeholders cut out)."""
    import re

    import polib
    from django.conf import settings

    po = polib.pofile(str(settings.BASE_DIR / "locale" / "fr" / "LC_MESSAGES" / "django.po"))
    entries = po.translated_entries()
    # Words French shares with English ("Type", "File", "worker", "kg CO2e") are French too.
    french = "\n".join(t for e in entries for t in [e.msgstr, *e.msgstr_plural.values()] if t)
    phrases = set()
    for entry in entries:
        for english in (entry.msgid, entry.msgid_plural):
            for part in re.split(r"%\(\w+\)s", english or ""):
                part = part.strip(" ")
                if len(part.strip(" .:,;?()…—-")) >= 3 and not _has(french, part):
                    phrases.add(part)
    return sorted(phrases)


def _has(text: str, phrase: str) -> bool:
    import re

    return re.search(r"(?<![\w-])" + re.escape(phrase) + r"(?![\w-])", text) is not None


def english_left(page: Any, *, also_data: str = "") -> list[str]:
    """English phrases of the catalogue still on the page (French page: should be none)."""
    text = page.evaluate(
        """(selectors) => {
            const copy = document.body.cloneNode(true);
            copy.querySelectorAll(selectors).forEach((e) => e.remove());
            return copy.innerText;
        }""",
        DATA_SELECTORS + (", " + also_data if also_data else ""),
    )
    return [p for p in _english_of_catalogue() if _has(text, p)]
