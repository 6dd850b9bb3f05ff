"""One real ``cdi serve`` and one headless Chromium (Debian's, driven by Selenium) for the console tests.

Both are module-scoped: starting Chromium costs seconds, and the tests build on each other's state
(the imported disk is the VM's). Screenshots of every step go to ``test-artifacts/console/``.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.serve import Serve

CHROMIUM = os.environ.get("CDI_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CDI_CHROMEDRIVER", "/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"
# what this machine needs (see MEASURED.md): no sandbox as root, no GPU, nothing phoning home
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1800"]


class ConsoleServe(Serve):
    """``cdi serve`` with the console's address and one-time sign-in link read from its start-up message."""

    def start(self, timeout: float = 30) -> ConsoleServe:
        super().start(timeout)
        deadline = time.monotonic() + timeout
        while not (m := re.search(r"sign in as admin[^:]*: (https://\S+)", self.log.read_text())):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no sign-in link in the log:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        self.sign_in_link = m.group(1)
        self.console_url = self.sign_in_link.split("#")[0]
        return self


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleServe]:
    if not Path(CHROMIUM).exists() or not Path(CHROMEDRIVER).exists():
        pytest.skip(f"{CHROMIUM} and {CHROMEDRIVER} are needed (scripts/setup.sh installs chromium, chromium-driver)")
    s = ConsoleServe(tmp_path_factory.mktemp("console") / "data", "--upload-resume-interval", str(1 << 20)).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not Path(CHROMIUM).exists() or not Path(CHROMEDRIVER).exists():
        pytest.skip(f"{CHROMIUM} and {CHROMEDRIVER} are needed (scripts/setup.sh installs chromium, chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    opts.accept_insecure_certs = True  # the API server's own CA signed the console's certificate
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shot(browser: Any) -> Callable[[str], Path]:
    """Save a screenshot of the page as ``test-artifacts/console/NN-name.png``."""
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    print(f"\nconsole screenshots: {ARTIFACTS}")
    counter = iter(range(1, 1000))

    def save(name: str) -> Path:
        path = ARTIFACTS / f"{next(counter):02d}-{name}.png"
        browser.save_screenshot(str(path))
        return path

    return save
