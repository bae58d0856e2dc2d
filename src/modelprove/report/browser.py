"""A report as a person sees it: headless Chromium (Debian's ``chromium``) takes a screenshot of the page.

Used by the test that checks a report renders and by scripts/report_screenshot.py (the README's picture).
The browser runs with a throw-away profile and every background network feature off; the page itself
may load nothing (its Content-Security-Policy allows data: images only).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from modelprove.core.errors import ModelproveError

CHROMIUM_NAMES = ("chromium", "chromium-browser")


def find_chromium() -> str | None:
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def screenshot(page: str | Path, png: str | Path, *, width: int = 1200, height: int = 2000, timeout: float = 180) -> Path:
    """Render the HTML file ``page`` in headless Chromium and write a ``width`` x ``height`` PNG of its top."""
    browser = find_chromium()
    if browser is None:
        raise ModelproveError("Chromium is not installed.", fix="apt-get install -y chromium (Debian), or `make chromium`.")
    page, png = Path(page).resolve(), Path(png).resolve()
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="modelprove-chromium-") as profile:
        command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   "--hide-scrollbars", f"--user-data-dir={profile}", f"--screenshot={png}",
                   f"--window-size={width},{height}", page.as_uri()]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ModelproveError(f"Chromium did not finish the screenshot of {page} within {timeout:.0f} s.") from None
    if done.returncode != 0 or not png.is_file():
        raise ModelproveError(f"Chromium could not take a screenshot of {page} (exit {done.returncode}): "
                              f"{done.stderr.strip()[-500:]}")
    return png
