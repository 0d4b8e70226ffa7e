"""The Dagster UI after `mm-platform run` (issue #19): headless Chromium opens dagster-webserver on
the $DAGSTER_HOME the CLI recorded into and sees the run succeeded, every asset materialized for
the run date and every asset check passed. Screenshots go to mm_platform_tests/artifacts/
(dagster_ui_*.png). Skipped when Chromium, chromedriver or selenium are missing.

The asset keys and check names come from the instance after the run (Dagster's Python API), not
from this file, so the test holds whatever prefix the dataset gives its keys."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

import dagster as dg
import pytest

from mm_platform.config import load_config
from mm_platform.datagen import write_sales
from mm_platform_tests.conftest import write_config

pytestmark = pytest.mark.slow  # a pipeline run, a webserver and a browser: ≈ 2-3 minutes on 2 cores

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(__file__).parent / "artifacts"
RUN_DATE = "2025-12-31"  # write_sales' default end date
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MM_CONFIG", "DAGSTER_HOME", "MM_DEBUG", "MM_DATASETS")}
    # The webserver's code location serves the datasets folder: this test's dataset only.
    env.update(MM_HOME=str(home), DAGSTER_HOME=str(home / "instance"), MM_DATASETS=str(home / "datasets"))
    return env


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """`mm-platform run` on a small generated dataset into a new $DAGSTER_HOME, and what the
    instance then holds: the run, the materialized asset keys, the check results."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Chromium and chromedriver are not installed (Debian: apt-get install chromium chromium-driver)")
    pytest.importorskip("selenium", reason="selenium is not installed (pip install 'selenium>=4.20')")
    home = tmp_path_factory.mktemp("dagster_ui")
    (home / "datasets").mkdir()
    cfg_path = home / "datasets" / "retail.yaml"
    write_config(home, horizon=7).rename(cfg_path)
    cfg = load_config(cfg_path)
    write_sales(cfg.source.url, cfg.source.table, stores=2, items=3, days=300, seed=5)
    out = subprocess.run([sys.executable, "-m", "mm_platform.cli", "run", "--config", str(cfg_path), "--run-date", RUN_DATE],
                         cwd=home, env=_env(home), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    with dg.DagsterInstance.from_config(str(home / "instance")) as instance:
        run = instance.get_run_by_id(summary["dagster_run_id"])
        assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS
        mats = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        keys = sorted({e.dagster_event.asset_key for e in mats}, key=lambda k: k.path)
        partitions = {e.dagster_event.asset_key: e.dagster_event.partition for e in mats}
        checks: dict[dg.AssetKey, dict[str, bool]] = {}
        for e in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
            data = e.dagster_event.event_specific_data
            checks.setdefault(data.asset_key, {})[data.check_name] = data.passed
    # What the UI must show: the six pipeline assets (whatever their prefix) and passed checks.
    names = {k.path[-1] for k in keys}
    assert {"raw_sales", "training_sets", "model_set", "promoted_models", "batch_predictions", "forecast_metrics"} <= names
    assert checks and all(all(v.values()) for v in checks.values()), checks
    assert {partitions[k] for k in keys} <= {RUN_DATE, None}, partitions
    return home, run.run_id, keys, checks, partitions


@pytest.fixture(scope="module")
def webserver(recorded):
    home = recorded[0]
    port = _free_port()
    log = open(home / "webserver.log", "wb")  # closed at teardown
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-webserver"), "-w", str(ROOT / "workspace.yaml"),
         "-h", "127.0.0.1", "-p", str(port)],
        cwd=home, env=_env(home), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 240
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{base}/server_info", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail("dagster-webserver did not start:\n" + (home / "webserver.log").read_text()[-3000:])
            time.sleep(1)
        yield base
    finally:
        # its own process group: the webserver and the code server it started
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()


@pytest.fixture(scope="module")
def browser(webserver):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="mm-dagster-ui-chromium-")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1400,1000",
                f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    ARTIFACTS.mkdir(exist_ok=True)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _open(driver, url: str, *texts: str, ready=None, timeout: float = 90) -> list[str]:
    """Load ``url`` and wait until the page shows every one of ``texts`` (and ``ready(lines)``
    holds); the page's text lines."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)

    def shown(d):
        try:
            body = d.find_element(By.TAG_NAME, "body").text
        except WebDriverException:
            return False
        return body if all(t in body for t in texts) and (ready is None or ready(body.splitlines())) else False

    try:
        body = WebDriverWait(driver, timeout, poll_frequency=0.5).until(shown)
    except Exception:
        _screenshot(driver, "timeout")
        text = driver.find_element(By.TAG_NAME, "body").text
        missing = [t for t in texts if t not in text]
        raise AssertionError(f"{url}: not shown within {timeout:g}s: {missing}\n--- page text ---\n{text[:3000]}") from None
    _dismiss_newsletter(driver)
    return body.splitlines()


def _dismiss_newsletter(driver) -> None:
    """The UI's first visit opens a "Join the Dagster community" dialog over the page."""
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.XPATH, "//button[normalize-space()='Skip']"):
        if button.is_displayed():
            button.click()
            time.sleep(0.5)


def _screenshot(driver, name: str) -> None:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, max(1000, min(int(height), 4000)))
    time.sleep(0.5)
    driver.save_screenshot(str(ARTIFACTS / f"dagster_ui_{name}.png"))
    driver.set_window_size(1400, 1000)


def _label(key: dg.AssetKey) -> str:
    return " / ".join(key.path)  # how the UI writes a key


def _asset_url(base: str, key: dg.AssetKey) -> str:
    return f"{base}/assets/" + "/".join(quote(p, safe="") for p in key.path)


def test_the_run_page_shows_the_run_succeeded_with_its_assets_and_checks(recorded, webserver, browser):
    _, run_id, keys, checks, _ = recorded
    n_checks = sum(len(c) for c in checks.values())
    lines = _open(browser, f"{webserver}/runs/{run_id}", run_id[:8], "Success", RUN_DATE,
                  f"{len(keys)} assets", f"{n_checks} checks", "ASSET_CHECK_EVALUATION")
    assert "Errored (0)" in lines, lines[:80]
    _screenshot(browser, "run")


def test_the_catalog_lists_every_materialized_asset(recorded, webserver, browser):
    _, _, keys, _, _ = recorded
    # (the status column fills in after the names: "- partitions" until then)
    _open(browser, f"{webserver}/assets", *[_label(k) for k in keys], ready=lambda lines: "- partitions" not in lines)
    _screenshot(browser, "catalog")


def _latest_materialization(lines: list[str]) -> list[str]:
    """The asset page's "Latest materialization" section once it is filled in: its age ("2
    minutes ago") and, for a partitioned asset, the partition."""
    if "Latest materialization" not in lines:
        return []
    at = lines.index("Latest materialization") + 1
    return lines[at:at + 2] if at < len(lines) and lines[at].endswith("ago") else []


def test_each_asset_shows_its_materialization_for_the_run_date(recorded, webserver, browser):
    _, _, keys, _, partitions = recorded
    for key in keys:
        lines = _open(browser, _asset_url(webserver, key), key.path[-1], ready=_latest_materialization)
        latest = _latest_materialization(lines)
        if partitions[key] is not None:  # the run date's partition, under the materialization's age
            assert latest[1] == RUN_DATE, (key, latest)
        if key.path[-1] == "model_set":
            _screenshot(browser, "asset_model_set")


def _check_list(lines: list[str], n: int) -> list[tuple[str, str]]:
    """The asset's checks tab lists each check as its name (long ones shortened with "…") and the
    state of its latest execution: those ``n`` pairs, once they are all there."""
    if "Execute all" not in lines:
        return []
    start = lines.index("Execute all") + 1
    listed = lines[start:start + 2 * n]
    pairs = list(zip(listed[0::2], listed[1::2], strict=False))
    return pairs if len(pairs) == n and all(state in _STATES for _, state in pairs) else []


_STATES = {"Succeeded", "Failed", "Warning", "Not evaluated", "Skipped", "Execution failed", "In progress"}


def _shown_as(shown: str, name: str) -> bool:
    head, cut, tail = shown.partition("…")
    return name.startswith(head) and name.endswith(tail) if cut else shown == name


def test_every_check_shows_as_passed(recorded, webserver, browser):
    _, _, _, checks, _ = recorded
    for key, results in checks.items():
        n = len(results)
        lines = _open(browser, _asset_url(webserver, key) + "?view=checks", f"Checks ({n})",
                      ready=lambda lines, n=n: _check_list(lines, n))
        listed = _check_list(lines, n)
        assert [state for _, state in listed] == ["Succeeded"] * n, (key, listed)
        for name in results:
            assert sum(_shown_as(shown, name) for shown, _ in listed) == 1, (key, name, listed)
        # the first check's details: its latest evaluation passed
        at = lines.index("Evaluation result")
        assert lines[at + 1] == "Passed", (key, lines[at:at + 10])
        _screenshot(browser, f"checks_{key.path[-1]}")
