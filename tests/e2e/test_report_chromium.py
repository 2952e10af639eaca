"""A real run's report in headless Chromium: it renders (a non-blank screenshot), the page
logs nothing to the console (no blocked fetch, no error), and every plot is drawn.

Needs Debian's ``chromium`` (``apt-get install chromium``; .ci/run installs it); skipped, with
that reason, where it is missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from coordinator.config import RunConfig
from coordinator.report import REPORT_FILE
from federation.local import run_in_process
from strategies.dp import DPConfig
from xsilo.report_html import page as html_page

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser",
                                                "google-chrome")) if p), None)
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--enable-logging=stderr", "--v=0", "--window-size=1280,2400")


def _need_chromium() -> str:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium); the report cannot "
                    "be rendered in a browser here")
    return CHROMIUM


def chromium(page: Path, profile: Path, *extra: str) -> tuple[str, str]:
    """Run headless Chromium on ``page`` with a fresh profile; (stdout, stderr). Every process
    it starts is in its own session and ended if it outlives the call."""
    proc = subprocess.Popen([_need_chromium(), *FLAGS, f"--user-data-dir={profile}", *extra,
                             page.resolve().as_uri()], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            stdin=subprocess.DEVNULL)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # renderer / GPU helpers, if any are left
        except ProcessLookupError:
            pass
        proc.wait()
    assert proc.returncode == 0, err[-2000:]
    return out, err


def console_messages(stderr: str) -> list[str]:
    """What the page logged to its console (Chromium logs each as ``…:CONSOLE…``). The report
    runs no script, so any message is a problem: a blocked load, an error."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


class _Plots(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.plots: list[dict] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "svg" and "plot" in (a.get("class") or ""):
            self.plots.append({"title": a.get("aria-label"), "paths": []})
        elif tag == "path" and a.get("class") == "series" and self.plots:
            self.plots[-1]["paths"].append(a.get("d") or "")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import make_federation

    root = tmp_path_factory.mktemp("chromium")
    configs = make_federation(root / "silos", model="sklearn:SGDClassifier")
    dp = DPConfig(mechanism="central", noise_multiplier=0.8, clip_norm=5.0, max_epsilon=40.0,
                  accounting="rdp")  # PLD at z = 0.8 takes ~4 s a round; the plot is the same
    config = RunConfig(num_rounds=3, min_silos=3, local_epochs=2, dp=dp, name="browser")
    assert run_in_process(root / "run", config, configs)["status"] == "completed"
    return root / "run" / REPORT_FILE


def test_the_report_renders_with_every_plot_drawn_and_a_quiet_console(
        report: Path, tmp_path: Path) -> None:
    dom, err = chromium(report, tmp_path / "profile-dom", "--dump-dom")
    assert console_messages(err) == []
    parser = _Plots()
    parser.feed(dom)
    titles = [p["title"] for p in parser.plots]
    assert titles == ["accuracy per round", "loss per round",
                      "training loss (contributors, weighted)", "privacy spent (ε) per round",
                      "round time: computing vs waiting", "participation per round"]
    for plot in parser.plots:
        assert plot["paths"], plot["title"]
        for d in plot["paths"]:  # drawn, with real coordinates
            assert d.startswith("M") and any(ch.isdigit() for ch in d), (plot["title"], d)


def test_the_screenshot_is_not_blank(report: Path, tmp_path: Path) -> None:
    image = pytest.importorskip("PIL.Image", reason="Pillow (a matplotlib dependency) reads "
                                                     "the screenshot")
    shot = tmp_path / "report.png"
    _, err = chromium(report, tmp_path / "profile-shot", f"--screenshot={shot}")
    assert console_messages(err) == []
    assert shot.is_file() and shot.stat().st_size > 20_000
    with image.open(shot) as img:
        rgb = img.convert("RGB")
        assert rgb.size == (1280, 2400)
        colors = rgb.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50  # text, axes and coloured series
    white = max(count for count, c in colors if c == (255, 255, 255))
    assert white < 0.97 * rgb.size[0] * rgb.size[1]


def test_the_console_check_catches_a_page_that_fetches(tmp_path: Path) -> None:
    """The negative control: the same check flags a report that tried to load something."""
    page = tmp_path / "fetching.html"  # the report's own page builder, CSP included
    page.write_text(html_page("fetching", [
        ("x", '<img src="https://example.invalid/pixel.png" alt="">')]))
    _, err = chromium(page, tmp_path / "profile-bad", "--dump-dom")
    messages = console_messages(err)
    assert len(messages) == 1 and "Content Security Policy" in messages[0]
