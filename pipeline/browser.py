"""Headless Chromium (driven by Playwright) to check and screenshot the report page.

Uses the system's Chromium (Debian package `chromium`; or MOLAR_CHROMIUM=/path), never a browser download, and
runs it with networking features off: the page must render with no network at all.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from molar_core.errors import MolarError

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@dataclass
class PageCheck:
    console_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    images: int = 0
    broken_images: list[str] = field(default_factory=list)
    title: str = ""


def chromium_path() -> str:
    path = os.environ.get("MOLAR_CHROMIUM") or next(
        (p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if path is None:
        raise MolarError("headless Chromium not found: install it (Debian: apt-get install chromium) "
                         "or set MOLAR_CHROMIUM to its path")
    return path


def render(page_path: Path, screenshot: Path | None = None, width: int = 1280) -> PageCheck:
    """Open a local HTML file, collect console errors, failed requests and broken images; optionally screenshot."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise MolarError("the browser check needs Playwright: pip install 'molar[report]'") from None
    check = PageCheck()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.on("console", lambda m: check.console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: check.console_errors.append(str(e)))
            page.on("requestfailed", lambda r: check.failed_requests.append(r.url[:100]))
            page.goto(Path(page_path).resolve().as_uri(), wait_until="load")
            check.title = page.title()
            status = page.evaluate("""() => Array.from(document.images).map(
                im => [im.alt, im.complete && im.naturalWidth > 0])""")
            check.images = len(status)
            check.broken_images = [alt for alt, ok in status if not ok]
            if screenshot is not None:
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return check
