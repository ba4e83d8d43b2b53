"""Driving the studio's page in headless chromium (Debian's `chromium` + `chromium-driver`, through Selenium): the
browser tests, `bench/bench_studio.py` and `tools/studio_screenshot.py` share this.

Callers run inside the loopback-only network namespace (instseg_ros.isolation); chromium's own background
traffic (component updates, field trials) is switched off as well.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def chromium(profile: Path, window: tuple[int, int] = (1400, 900)) -> Any:
    """A headless chromium WebDriver with its profile in `profile` (the caller removes it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-component-update", "--no-first-run",
                     f"--window-size={window[0]},{window[1]}", f"--user-data-dir={profile}"):
        options.add_argument(argument)
    options.binary_location = CHROMIUM
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def click_image(driver: Any, overlay: Any, image_width: int, x: float, y: float, modifier: str | None = None,
                double: bool = False) -> None:
    """Click image pixel (x, y) of the page's overlay (an image `image_width` pixels wide), with a key held
    (`modifier`, e.g. selenium's Keys.SHIFT) or twice (`double`: a double-click). Selenium's offsets count from
    the element's centre; flooring keeps the last pixel column inside the element."""
    from selenium.webdriver.common.action_chains import ActionChains

    width, height = overlay.size["width"], overlay.size["height"]
    scale = width / image_width
    offset = (math.floor((x + 0.5) * scale - width / 2), math.floor((y + 0.5) * scale - height / 2))
    chain = ActionChains(driver).move_to_element_with_offset(overlay, *offset)
    if double:
        chain.double_click()
    elif modifier is not None:
        chain.key_down(modifier).click().key_up(modifier)
    else:
        chain.click()
    chain.perform()
