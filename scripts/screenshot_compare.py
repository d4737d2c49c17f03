"""Make docs/images/serve-compare.png: `ina serve` (no arguments) in headless Chromium, compare view.

    .venv/bin/python scripts/screenshot_compare.py [PROMPT]

Needs `ina finetune` to have run (its adapter is what `ina serve` picks up) and /usr/bin/chromium.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from ina.serve.server import free_port, wait_until_healthy

PROMPT = (
    "Is the following movie review positive or negative? Answer with one word.\n\n"
    "A gorgeous, witty, seductive movie."
)
OUT = Path(__file__).resolve().parents[1] / "docs" / "images" / "serve-compare.png"


def main() -> None:
    prompt = sys.argv[1] if len(sys.argv) > 1 else PROMPT
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "ina", "serve", "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, server, timeout=150)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-sync"],
            )
            page = browser.new_page(viewport={"width": 1400, "height": 640})
            page.goto(url)
            page.locator("#temperature").fill("0")
            page.locator("#max-tokens").fill("40")
            page.click("#tab-compare")
            page.fill("#compare-input", prompt)
            page.click("#compare-send")
            checked = page.locator("#compare-models input:checked").count()
            expect(page.locator(".compare-col.done")).to_have_count(checked, timeout=300_000)
            page.screenshot(path=str(OUT))
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
