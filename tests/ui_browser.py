"""The Airflow UI in a real browser, as the tests drive it: Debian's Chromium (``/usr/bin/chromium``,
installed by scripts/bootstrap.sh) through Playwright - never a browser ``playwright install``
downloads. Signs in through the login form like a person."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CHROMIUM = "/usr/bin/chromium"


@contextmanager
def signed_in(base: str, password: str) -> Iterator[Any]:
    """A page of a fresh browser, signed in as ``admin`` (the simple auth manager's login form)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            # Generous: the API server shares two cores with a whole Airflow (and, under xdist, another
            # test module); a page that never comes still fails, after 2 minutes.
            page.set_default_timeout(120_000)
            page.goto(base + "/")
            page.get_by_label("Username").fill("admin")
            page.get_by_label("Password").fill(password)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(base + "/")
            yield page
        finally:
            browser.close()


def report_tab(page: Any, base: str, dag_id: str, run_id: str) -> Any:
    """Open the run's "Pipeline report" tab; the frame (the plugin's page) once it has loaded."""
    run = urllib.parse.quote(run_id, safe="")
    page.goto(f"{base}/dags/{dag_id}/runs/{run}")
    page.get_by_role("link", name="Pipeline report").click()
    frame = page.frame_locator("iframe")
    frame.locator("h1").wait_for()
    return frame


def shown_fields(frame: Any) -> dict[str, tuple[str, str]]:
    """Every number the report page shows: its report.json path -> (value attribute, text)."""
    cells = frame.locator("[data-field]").evaluate_all(
        "els => els.map(e => [e.dataset.field, e.dataset.value ?? null, e.textContent])"
    )
    return {field: (value, text) for field, value, text in cells}


def open_trigger_form(page: Any, base: str, dag_id: str) -> Any:
    """The trigger dialog of ``dag_id``."""
    page.goto(f"{base}/dags/{dag_id}")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Trigger Dag").first.wait_for()
    return dialog


def section_text(page: Any, dialog: Any, section: str) -> str:
    """The text of one section of the form, opened (the form shows one section at a time)."""
    dialog.get_by_role("button", name=section, exact=True).click()
    content = dialog.locator(f'[id$=":content:{section}"]')
    content.wait_for()
    page.wait_for_timeout(300)  # the accordion's opening animation
    return content.inner_text()
