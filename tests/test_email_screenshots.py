"""Each sample email's HTML part, as sent, rendered in headless Chromium at desktop and mobile width."""

from __future__ import annotations

import email
import shutil
from datetime import UTC, datetime
from email import policy
from pathlib import Path

import pytest
from conftest import SAMPLES
from sqlalchemy.orm import Session

from service.config import Settings
from service.releases import store as releases
from service.rendering.prepare import Recipient, new_message_id, prepare_release

CHROMIUM = "/usr/bin/chromium"
NOW = datetime(2022, 7, 5, 8, 0, tzinfo=UTC)
WIDTHS = {"desktop": 1280, "mobile": 375}


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.sqlite_only
@pytest.mark.skipif(not shutil.which(CHROMIUM), reason="chromium is not installed")
def test_sample_emails_screenshots(db: Session, settings: Settings, artifacts: Path) -> None:
    """The HTML of both samples fits the viewport at 1280 and 375 px, with no horizontal scroll."""
    from playwright.sync_api import sync_playwright

    pages: dict[str, str] = {}
    for path in sorted(SAMPLES.glob("*.md")):
        release = releases.create_release(db, settings, body=path.read_text(encoding="utf-8"),
                                          embargo_until=datetime(2022, 7, 6, 9, 0, tzinfo=UTC)
                                          if "task-force" in path.name else None, now=NOW)
        db.commit()
        recipient = Recipient(email="elodie.martin@lemonde.fr", contact_id=1, civility="Mme",
                              first_name="Élodie", last_name="Martin", language="fr")
        raw = prepare_release(db, release.id, settings).render_bytes(
            recipient, message_id=new_message_id(settings), now=NOW)
        html = email.message_from_bytes(raw, policy=policy.default).get_body(("html",))
        assert html is not None
        pages[path.stem] = html.get_content()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            for name, html in pages.items():
                for label, width in WIDTHS.items():
                    page = browser.new_page(viewport={"width": width, "height": 900})
                    # Offline like a mail client with remote content blocked.
                    page.route("**/*", lambda route: route.abort())
                    page.set_content(html, timeout=20_000)
                    scroll_width = page.evaluate("document.documentElement.scrollWidth")
                    container = page.evaluate(
                        "document.querySelector('table.container').getBoundingClientRect().width")
                    target = artifacts / f"email-{name}-{label}.png"
                    page.screenshot(path=str(target), full_page=True, timeout=20_000)
                    page.close()
                    assert target.stat().st_size > 10_000
                    assert scroll_width <= width, f"{name} scrolls sideways at {width}px"
                    assert container <= 640
        finally:
            browser.close()
