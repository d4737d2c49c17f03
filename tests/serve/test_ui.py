"""The web UI in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright): chat and compare."""

from __future__ import annotations

import itertools
import os
import threading
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

# The chat answer is seen mid-stream: the worker is held at this decode step until the page has shown part
# of it, so the test needs no sleep and no luck with the machine's load (the answer is 16 tokens).
PAUSE_AT_STEP = 4
PARTIAL = "() => (document.querySelector('.msg.assistant .text')?.textContent || '').trim().length > 0"


def _browser(playwright: object) -> object:
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


def test_chat_streams_and_compare_shows_models_side_by_side(
    server: object, engine: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutation: app.js rendering the answer only when the stream ends (no partial text is ever shown)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")
    expect = sync_api.expect
    prompt = "Tell me a joke about a cat"
    max_tokens = 16

    def expected(model: str) -> str:
        ids = engine.encode_chat(model, [{"role": "user", "content": prompt}])
        return engine.generate(model, ids, SamplingParams(max_tokens=max_tokens, temperature=0)).text

    release, steps, step = threading.Event(), itertools.count(1), engine.runner.step

    def held_step(*args: object) -> object:
        if next(steps) == PAUSE_AT_STEP:
            release.wait(60)
        return step(*args)

    monkeypatch.setattr(engine.runner, "step", held_step)
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

        page.fill("#chat-input", prompt)
        page.click("#chat-send")
        try:  # the worker waits at its 4th decode step: what the page shows now came before the end
            page.wait_for_function(PARTIAL, timeout=30_000)
            partial = page.locator(".msg.assistant .text").inner_text()
        finally:
            release.set()
        answer = page.locator(".msg.assistant.done .text")
        expect(answer).to_have_count(1, timeout=30_000)
        final = answer.inner_text().strip()
        assert final == expected("ina03").strip()
        assert final.startswith(partial.strip()) and len(partial.strip()) < len(final), (
            f"the answer must appear piece by piece (streamed), not all at once: {partial!r} then {final!r}"
        )
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


HOSTILE_ID = '"><img src=x onerror="window.__pwned=1">'


def test_an_operators_model_id_is_shown_as_text_never_as_html(serve_files: object) -> None:
    """Issue 24.9: a base model id holding markup is shown as its characters; no element is made of it.
    Mutation: app.js building the compare checkboxes with `label.innerHTML = ... value="${model.id}"`."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")
    from ina.serve.api import create_app
    from ina.serve.engine import Engine
    from ina.serve.server import LiveServer
    from ina.serve.settings import ServeSettings

    engine = Engine.load(serve_files.base, {}, base_model_id=HOSTILE_ID, dtype="float32")
    engine.start()
    settings = ServeSettings(base_model=str(serve_files.base), base_model_id=HOSTILE_ID, api_key="")
    try:
        with LiveServer(create_app(engine, settings)) as live, sync_api.sync_playwright() as playwright:
            browser = _browser(playwright)
            page = browser.new_page()
            page.goto(f"{live.url}/")
            sync_api.expect(page.locator("#model-select option")).to_have_count(1)
            assert page.locator("#model-select option").inner_text() == f"{HOSTILE_ID} (base)"
            assert page.locator("#compare-models input").get_attribute("value") == HOSTILE_ID
            assert page.locator("#compare-models span").inner_text() == HOSTILE_ID
            assert page.locator("img").count() == 0
            assert page.evaluate("window.__pwned") is None
            browser.close()
    finally:
        engine.shutdown()
