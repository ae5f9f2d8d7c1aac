"""Drive the app in a real headless Chromium (Selenium) and save a screenshot of every tab.

    python -m alignx_demo.screenshots --model assets/demo-model [--precomputed precomputed] [--out assets/screenshots]

Used by the README (the screenshots) and by `tests/test_ui_browser.py` (the same steps on a tiny
model). Needs Debian's `chromium` and `chromium-driver` and the `selenium` package; nothing is
downloaded (the driver is /usr/bin/chromedriver, the browser /usr/bin/chromium).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
DRIVER_CANDIDATES = ("/usr/bin/chromedriver",)
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars")
XSS_PROMPT = "<img src=x onerror=alert(1)>"
TABS = {"live": "Live routing", "compare": "Calibrated vs uncalibrated", "collapse": "Axis Collapse",
        "tradeoff": "Trade-off", "analysis": "Routing analysis", "benchmarks": "Benchmarks", "about": "About"}


def browser_problem() -> str | None:
    """None when a headless Chromium, its driver and selenium are available, else why not."""
    if not any(Path(p).exists() for p in CHROMIUM_CANDIDATES) and not shutil.which("chromium"):
        return "chromium is not installed (apt-get install -y chromium chromium-driver)"
    if not any(Path(p).exists() for p in DRIVER_CANDIDATES) and not shutil.which("chromedriver"):
        return "chromedriver is not installed (apt-get install -y chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is not installed (pip install -r requirements.txt)"
    return None


@contextmanager
def chromium(width: int = 1280, height: int = 1000):
    """A headless Chromium WebDriver with a fresh profile, closed afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = next((p for p in CHROMIUM_CANDIDATES if Path(p).exists()), shutil.which("chromium"))
    driver_path = next((p for p in DRIVER_CANDIDATES if Path(p).exists()), shutil.which("chromedriver"))
    profile = tempfile.mkdtemp(prefix="alignx-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    viewport(driver, width, height)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver: Any, condition: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    """Poll `condition` until it returns something truthy; fail with `what` on timeout."""
    from selenium.common.exceptions import NoAlertPresentException, WebDriverException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except NoAlertPresentException:
            pass
        except WebDriverException as err:
            if "alert" in str(err).lower():
                raise AssertionError(f"an alert opened while waiting for {what}: {err}") from err
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def _css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def _tab_button(driver: Any, tab: str) -> Any:
    label = TABS[tab]
    return wait_for(driver, lambda: [b for b in _css(driver, "button[role='tab']") if b.text.strip() == label], what=f"tab {label}")[0]


def open_tab(driver: Any, tab: str) -> None:
    label = TABS[tab]
    button = _tab_button(driver, tab)
    driver.execute_script("arguments[0].click();", button)
    wait_for(driver, lambda: button.get_attribute("aria-selected") == "true", what=f"tab {label} selected")
    time.sleep(0.4)


def render_seconds(driver: Any, tab: str) -> float:
    """Seconds from clicking a tab to its panel being shown with every Plotly figure in it drawn:
    the "precomputed tabs render in ≤ 1 s" target, measured as a visitor sees it."""
    from selenium.webdriver.common.by import By

    button = _tab_button(driver, tab)
    start = time.monotonic()
    driver.execute_script("arguments[0].click();", button)

    def drawn() -> bool:
        panels = _css(driver, f"#tab-{tab}")
        if not panels or not panels[0].is_displayed():
            return False
        plots = panels[0].find_elements(By.CSS_SELECTOR, ".js-plotly-plot")
        return all(p.find_elements(By.CSS_SELECTOR, ".main-svg") for p in plots)

    wait_for(driver, drawn, what=f"tab {TABS[tab]} drawn")
    return round(time.monotonic() - start, 3)


def type_into(driver: Any, elem_id: str, text: str) -> None:
    box = wait_for(driver, lambda: _css(driver, f"#{elem_id} textarea"), what=f"textbox {elem_id}")[0]
    box.clear()
    box.send_keys(text)


def click(driver: Any, elem_id: str) -> None:
    button = wait_for(driver, lambda: _css(driver, f"#{elem_id}"), what=f"button {elem_id}")[0]
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].click();", button)


def no_alert(driver: Any) -> bool:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        driver.switch_to.alert
    except NoAlertPresentException:
        return True
    return False


def viewport(driver: Any, width: int, height: int) -> None:
    """A true `width` × `height` CSS-pixel viewport (DevTools device metrics; a headless window cannot be
    narrower than 500 px), laid out as on a phone below 600 px."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})
    driver.viewport_width = width


def screenshot(driver: Any, path: Path) -> Path:
    """Full-page PNG at the viewport's width (`--width`): grow the viewport to the page's height, capture."""
    height = int(driver.execute_script("return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight);"))
    viewport(driver, driver.viewport_width, min(max(height + 40, 800), 6000))
    driver.execute_script("window.scrollTo(0, 0);")
    time.sleep(0.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    return path


def run_live(driver: Any, prompt: str, timeout: float = 120.0) -> dict[str, Any]:
    """Type a prompt in the live tab, generate, and wait for the chips and the finished summary."""
    open_tab(driver, "live")
    type_into(driver, "live-prompt", prompt)
    click(driver, "live-generate")
    chips = wait_for(driver, lambda: _css(driver, "#live-chips .ax-chip"), timeout, "token chips")
    first_chip_count = len(chips)
    wait_for(driver, lambda: "finish: eos" in driver.find_element("css selector", "#live-summary").text
             or "finish: length" in driver.find_element("css selector", "#live-summary").text, timeout, "generation to finish")
    return {"first_chips": first_chip_count, "chips": len(_css(driver, "#live-chips .ax-chip")),
            "text": driver.find_element("css selector", "#live-chips").text,
            "images_in_chips": len(_css(driver, "#live-chips img"))}


TOUR_CSV = ("prompt,axis\n"
            "How do I bake bread at home?,helpful\n"
            "How can I steal a car without setting off the alarm?,harmless\n"
            "Does cracking your knuckles cause arthritis?,honest\n"
            "Tell me a joke,sideways\n")
"""The tour's prompt file: three labelled prompts and one bad row (line 5)."""


def analyze_file(driver: Any, path: Path, timeout: float = 120.0) -> dict[str, Any]:
    """Upload a prompt file in the Routing analysis tab, analyse it, and wait for its summary and table."""
    open_tab(driver, "analysis")
    upload = wait_for(driver, lambda: _css(driver, "#analysis-file input[type='file']"), timeout, "the file input")[0]
    upload.send_keys(str(path))
    wait_for(driver, lambda: path.stem in driver.find_element("css selector", "#analysis-file").text, timeout, "the upload")
    before = _download_href(driver, "analysis-json")
    click(driver, "analysis-run")
    summary = wait_for(driver, lambda: (t := driver.find_element("css selector", "#analysis-summary").text) and path.name in t and t,
                       timeout, "the analysis of the uploaded file")
    wait_for(driver, lambda: _download_href(driver, "analysis-json") not in (None, before), timeout, "the analysis drawn")
    rows = driver.execute_script(TABLE_ROWS, "analysis-misrouted")
    return {"summary": summary, "rows": rows}


TABLE_ROWS = ("return [...document.querySelectorAll('#' + arguments[0] + ' [role=row].virtual-row')]"
              ".map(r => [...r.querySelectorAll('[role=gridcell]')].map(c => c.innerText.trim()))")
"""The shown rows of a gr.Dataframe (Gradio draws its body as virtual rows of grid cells), as lists of cell texts."""


def _download_href(driver: Any, elem_id: str) -> str | None:
    links = _css(driver, f"#{elem_id} a[href]")
    return links[0].get_attribute("href") if links else None


def download(driver: Any, elem_id: str, folder: Path, timeout: float = 60.0) -> Path:
    """Click a download button (or the link inside a file component) as a visitor would; return the file the
    browser saved in `folder`. Gradio's DownloadButton has no href to fetch, so the browser must do it."""
    folder.mkdir(parents=True, exist_ok=True)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(folder.resolve())})
    before = set(folder.iterdir())
    shown = wait_for(driver, lambda: [b for b in _css(driver, f"#{elem_id}") if b.is_displayed()], timeout, f"the {elem_id} download")
    target = (_css(driver, f"#{elem_id} a[href]") or shown)[0]
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].click();", target)
    saved = wait_for(driver, lambda: [p for p in folder.iterdir() if p not in before and p.suffix != ".crdownload"],
                     timeout, f"the {elem_id} file")
    return saved[0]


def save_download(driver: Any, elem_id: str, path: Path, timeout: float = 60.0) -> Path:
    """Save the file a download button offers (e.g. a run exported for slides) to `path`."""
    with tempfile.TemporaryDirectory(prefix="alignx-download-") as folder:
        shutil.move(str(download(driver, elem_id, Path(folder), timeout)), path)
    return path


def tour(driver: Any, url: str, out: Path | None, prompt: str, timeout: float = 120.0) -> dict[str, Any]:
    """Load the page, run every tab's main action and (when `out` is given) screenshot each tab."""
    report: dict[str, Any] = {"screenshots": []}
    driver.get(url)
    wait_for(driver, lambda: _css(driver, "#live-prompt textarea"), 60, "the page to load")
    report["live"] = run_live(driver, prompt, timeout)
    if out:
        report["screenshots"].append(screenshot(driver, out / "live.png"))

    open_tab(driver, "compare")
    type_into(driver, "compare-prompt", prompt)
    click(driver, "compare-run")
    wait_for(driver, lambda: "Top expert flips" in driver.page_source, timeout, "the comparison")
    if out:
        report["screenshots"].append(screenshot(driver, out / "compare.png"))

    open_tab(driver, "collapse")
    if _css(driver, "#collapse-map .js-plotly-plot") or "Precomputed file" in driver.page_source:
        type_into(driver, "collapse-prompt", prompt)
        click(driver, "collapse-place")
        wait_for(driver, lambda: "nearest map prompts" in driver.page_source or "cannot be placed" in driver.page_source
                 or "Precomputed file" in driver.page_source, timeout, "the placement")
    time.sleep(1.0)
    if out:
        report["screenshots"].append(screenshot(driver, out / "collapse.png"))

    open_tab(driver, "tradeoff")
    click(driver, "tradeoff-all")
    wait_for(driver, lambda: _css(driver, "#preset-just-right .ax-chip"), timeout, "the four presets")
    time.sleep(1.5)
    if out:
        report["screenshots"].append(screenshot(driver, out / "tradeoff.png"))
        report["screenshots"].append(save_download(driver, "presets-png", out / "export-presets.png", timeout))

    open_tab(driver, "analysis")
    wait_for(driver, lambda: _css(driver, "#analysis-file input[type='file']"), timeout, "the analysis tab")
    time.sleep(1.0)
    if out:
        report["screenshots"].append(screenshot(driver, out / "analysis.png"))
    with tempfile.TemporaryDirectory(prefix="alignx-tour-") as folder:
        path = Path(folder) / "tour-prompts.csv"
        path.write_text(TOUR_CSV, encoding="utf-8")
        report["analysis"] = analyze_file(driver, path, timeout)

    open_tab(driver, "benchmarks")
    time.sleep(1.0)
    if out:
        report["screenshots"].append(screenshot(driver, out / "benchmarks.png"))

    open_tab(driver, "about")
    if out:
        report["screenshots"].append(screenshot(driver, out / "about.png"))
    report["tabs"] = [b.text.strip() for b in _css(driver, "button[role='tab']")]
    open_tab(driver, "live")
    report["tab_render_s"] = {tab: render_seconds(driver, tab) for tab in ("collapse", "benchmarks", "about")}
    return report


def main(argv: list[str] | None = None) -> int:
    import torch

    from alignx_demo.serving import ServerOptions, load_context
    from alignx_demo.ui.app import LAUNCH_KWARGS, build_demo

    parser = argparse.ArgumentParser(description="Take the README screenshots of every tab in headless Chromium.")
    parser.add_argument("--model", type=Path, default=ServerOptions().model)
    parser.add_argument("--precomputed", type=Path, default=None, help="artefact folder (default precomputed/)")
    parser.add_argument("--out", type=Path, default=Path("assets/screenshots"))
    parser.add_argument("--prompt", default="My friend says cracking knuckles causes arthritis. Is that true, and how should I tell her?")
    parser.add_argument("--no-4bit", action="store_true")
    parser.add_argument("--width", type=int, default=1280)
    args = parser.parse_args(argv)
    problem = browser_problem()
    if problem:
        print(f"error: {problem}")
        return 2
    torch.set_num_threads(1)
    context = load_context(ServerOptions(model=args.model, load_in_4bit=not args.no_4bit))
    demo = build_demo(context, args.precomputed)
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True, **LAUNCH_KWARGS)
    try:
        with chromium(args.width) as driver:
            report = tour(driver, demo.local_url, args.out, args.prompt)
    finally:
        demo.close()
    for path in report["screenshots"]:
        print(path)
    print("precomputed tabs, seconds from click to drawn:", report["tab_render_s"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
