"""The evaluation's HTML report, opened in real headless Chromium (Playwright, Debian's chromium)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from msev15.eval import cli
from tests.helpers import require_binary

CHROMIUM = require_binary("/usr/bin/chromium", "chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
TASKS = [
    {
        "id": "passes",
        "title": "The return policy",
        "tags": ["offline"],
        "goal": "Learn the return policy.",
        "turns": [{"say": "What is your return policy?"}],
        "facts": ["30 days"],
    },
    {
        "id": "fails",
        "title": "A fact <never> said",
        "tags": ["offline"],
        "goal": "Learn the return policy.",
        "turns": [{"say": "What is your return policy?"}],
        "facts": ["90 days"],
    },
    {"id": "later", "title": "Needs a model", "tags": ["llm-only"], "goal": "g", "turns": [{"say": "hi"}]},
]


async def test_the_html_report_reads_in_a_browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_PROVIDER", "offline")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "t.json").write_text(json.dumps(TASKS), "utf-8")
    report = tmp_path / "report.html"
    argv = ["--tasks-dir", str(tmp_path / "tasks"), "--trials", "2", "--html", str(report)]
    status = await asyncio.to_thread(cli.main, argv)  # the command runs its own event loop
    assert status == 1  # an offline task failed
    html = report.read_text("utf-8")
    assert "<script" not in html and "http" not in html.replace("http://www.w3.org/2000/svg", "")

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1200, "height": 900})
            await page.goto(report.as_uri())
            assert await page.title() == "Evaluation of offline:offline"
            rows = page.locator("table.tasks tr.task")
            assert await rows.count() == 3
            assert await page.locator("tr[data-task='passes'] td.pass").inner_text() == "2/2 passed"
            assert await page.locator("tr[data-task='fails'] td.fail").inner_text() == "0/2 passed"
            assert (
                await page.locator("tr[data-task='later'] td.skip").inner_text()
                == "not attempted: the offline model cannot do it (llm-only)"
            )
            assert "A fact <never> said" in await page.locator("tr[data-task='fails']").inner_text()
            bars = page.locator("svg rect.bar")
            assert await bars.count() == 2  # pass^1 and pass^2
            box = await bars.first.bounding_box()
            assert box is not None and box["height"] > 10
            figures = await page.locator("table.figures").inner_text()
            assert "pass^1\t0.500" in figures and "pass^k (k=2)\t0.500" in figures
            failures = page.locator("details.failure")
            assert await failures.count() == 2  # each failing trial, with its transcript
            await failures.first.locator("summary").click()
            shown = await failures.first.inner_text()
            assert "the answers never say '90 days'" in shown
            assert "customer: What is your return policy?" in shown and "30 days" in shown
        finally:
            await browser.close()
