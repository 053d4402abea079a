"""Headless Chromium for the browser test: Debian's ``chromium`` + ``chromium-driver``
(installed with apt-get when missing and running as root), driven by Selenium."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

APT_PACKAGES = ("chromium", "chromium-driver")


def chromium_paths() -> tuple[str, str]:
    """``(browser, driver)``; installs them when missing and possible, else fails clearly."""
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if not all(found) and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], env=env, check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-q", *APT_PACKAGES], env=env, check=False,
                       capture_output=True)
        found = shutil.which("chromium"), shutil.which("chromedriver")
    if not all(found):
        pytest.fail(f"the browser test needs Debian's {' and '.join(APT_PACKAGES)} "
                    f"(apt-get install -y {' '.join(APT_PACKAGES)}, as root)")
    return found


def headless_chromium():
    """A Selenium driver on a headless Chromium (no downloads: Debian's binaries only)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1600"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)
