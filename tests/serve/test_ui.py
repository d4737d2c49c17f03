"""The web UI in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright): chat and compare."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ina.serve.engine import SamplingParams

CHROMIUM = os.environ.get("INA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(),
    reason=f"no Chromium at {CHROMIUM}: install it (apt-get install chromium; scripts/setup does as root)",
)

# Records every distinct text an assistant bubble / compare column shows while it streams.
WATCH = """
window.__seen = [];
new MutationObserver(() => {
  for (const node of document.querySelectorAll('.msg.assistant .text, .compare-output')) {
    window.__seen.push(node.textContent);
  }
}).observe(document.body, {subtree: true, childList: true, characterData: true});
"""


def _browser(playwright: object) -> object:
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


def test_chat_streams_and_compare_shows_models_side_by_side(
    server: object, engine: object, tmp_path: Path
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")
    expect = sync_api.expect
    prompt = "Tell me a joke about a cat"
    max_tokens = 16

    def expected(model: str) -> str:
        ids = engine.encode_chat(model, [{"role": "user", "content": prompt}])
        return engine.generate(model, ids, SamplingParams(max_tokens=max_tokens, temperature=0)).text

    errors: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = _browser(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 820})
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.goto(f"{server.url}/")
        expect(page.locator("#model-select option")).to_have_count(3)
        expect(page.locator("#status")).to_have_text("3 models")
        page.locator("#temperature").fill("0")
        page.locator("#max-tokens").fill(str(max_tokens))
        expect(page.locator("#max-tokens-value")).to_have_text(str(max_tokens))
        page.select_option("#model-select", "ina03")
        page.evaluate(WATCH)

        page.fill("#chat-input", prompt)
        page.click("#chat-send")
        answer = page.locator(".msg.assistant.done .text")
        expect(answer).to_have_count(1, timeout=30_000)
        assert answer.inner_text().strip() == expected("ina03").strip()
        seen = {text for text in page.evaluate("window.__seen") if text}
        assert len(seen) >= 2, "the answer must appear piece by piece (streamed), not all at once"
        assert page.locator(".msg.user .text").inner_text() == prompt

        page.click("#tab-compare")
        expect(page.locator("#compare-models input:checked")).to_have_count(3)
        page.fill("#compare-input", prompt)
        page.click("#compare-send")
        columns = page.locator(".compare-col.done")
        expect(columns).to_have_count(3, timeout=30_000)
        outputs = {}
        for model in ("tiny-llama", "ina03", "ina09"):
            column = page.locator(f'.compare-col[data-model="{model}"]')
            expect(column.locator("h3")).to_have_text(model)
            outputs[model] = column.locator(".compare-output").inner_text()
            assert outputs[model].strip() == expected(model).strip()
        assert len(set(outputs.values())) == 3
        page.screenshot(path=str(tmp_path / "compare.png"))
        browser.close()
    assert (tmp_path / "compare.png").stat().st_size > 10_000
    assert not errors, errors


def test_ui_reports_api_errors(server: object) -> None:
    """A bad setting (max_tokens above the cap) shows the server's message instead of failing silently."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")
    with sync_api.sync_playwright() as playwright:
        browser = _browser(playwright)
        page = browser.new_page()
        page.goto(f"{server.url}/")
        sync_api.expect(page.locator("#model-select option")).to_have_count(3)
        page.evaluate("document.getElementById('max-tokens').max = 5000")
        page.locator("#max-tokens").fill("5000")
        page.fill("#chat-input", "hi")
        page.click("#chat-send")
        failed = page.locator(".msg.assistant.error .text")
        sync_api.expect(failed).to_contain_text("max_tokens", timeout=15_000)
        browser.close()


def test_compare_view_draws_each_models_attention_from_the_server(server: object, engine: object) -> None:
    """The Attention button draws, per ticked model, the head-averaged map that POST /v1/attention returns."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")
    import httpx

    text = "I put my red bag in the black bag."
    expected = {
        model: httpx.post(
            f"{server.url}/v1/attention", json={"model": model, "text": text, "layers": [-1]}
        ).json()
        for model in ("tiny-llama", "ina03", "ina09")
    }
    assert expected["tiny-llama"]["attention"] != expected["ina03"]["attention"]
    with sync_api.sync_playwright() as playwright:
        browser = _browser(playwright)
        page = browser.new_page()
        page.goto(f"{server.url}/")
        sync_api.expect(page.locator("#compare-models input:checked")).to_have_count(3)
        page.click("#tab-compare")
        page.fill("#compare-input", text)
        page.click("#compare-attention")
        maps = page.locator(".attention-map canvas")
        sync_api.expect(maps).to_have_count(3, timeout=30_000)
        for model, data in expected.items():
            figure = page.locator(f'.attention-map[data-model="{model}"]')
            layers = data["num_layers"]
            sync_api.expect(figure.locator("figcaption")).to_contain_text(f"layer {layers} of {layers}")
            tokens = len(data["tokens"])
            width = figure.locator("canvas").evaluate("c => c.width")
            assert width > 0 and width % tokens == 0  # one square cell per token
        # a masked (future) cell of the causal model is drawn grey, a visible one is not
        grey, seen = page.locator('.attention-map[data-model="ina03"] canvas').evaluate(
            """(c, tokens) => { const n = c.width; const cell = n / tokens; const ctx = c.getContext('2d');
                const px = (x, y) => Array.from(ctx.getImageData(x, y, 1, 1).data).join();
                return [px(n - cell / 2, cell / 2), px(cell / 2, n - cell / 2)]; }""",
            len(expected["ina03"]["tokens"]),
        )
        assert grey == "238,238,238,255" and seen != grey
        browser.close()
