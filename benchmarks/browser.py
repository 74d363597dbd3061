r"""The service's web page driven in a real browser: headless Chromium (Debian's `chromium` and
`chromium-driver`, which `make test` installs where it can) through Selenium.

The page test (tests/serving/test_page.py) drives search, enrolment and removal with these steps;
run as a program, it takes the README's screenshot of the page over a real index:

  facetriplet-build-index --model=dlib_resnet --gallery=<folder of people> --index_dir=/tmp/idx
  python -m benchmarks.browser --index=/tmp/idx --photo=<a photo of someone indexed> \
      --screenshot=/tmp/page.png   # the README shows it as docs/images/page.jpg
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
from typing import Any, Iterator

CHROMIUM = os.environ.get("FACETRIPLET_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("FACETRIPLET_CHROMEDRIVER", "/usr/bin/chromedriver")
# No background traffic: this machine's network is closed (refused connections otherwise).
FLAGS = (
  "--headless=new",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--window-size=1280,960",
)
WAIT_S = 60.0


class BrowserUnavailable(Exception):
  """No browser could be started here (the reason says why and what installs one)."""


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
  """A headless Chromium under Selenium, closed (and its profile removed) on leaving;
  BrowserUnavailable when none can start."""
  try:
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service
  except ImportError as e:
    raise BrowserUnavailable(f"selenium is not installed ({e}): pip install selenium") from e
  for path in (CHROMIUM, CHROMEDRIVER):
    if not os.path.exists(path):
      raise BrowserUnavailable(
        f"{path} is missing: apt-get install chromium chromium-driver (make test does, as root)"
      )
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for flag in FLAGS:
    options.add_argument(flag)
  profile = tempfile.mkdtemp(prefix="facetriplet-chromium-")
  options.add_argument(f"--user-data-dir={profile}")
  try:
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
  except WebDriverException as e:
    shutil.rmtree(profile, ignore_errors=True)
    raise BrowserUnavailable(f"Chromium did not start: {str(e).splitlines()[0]}") from e
  try:
    driver.set_page_load_timeout(WAIT_S)
    yield driver
  finally:
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _wait(driver: Any, condition, what: str) -> Any:
  from selenium.webdriver.support.ui import WebDriverWait

  return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(condition, f"waiting for {what}")


def _text(driver: Any, element_id: str) -> str:
  from selenium.webdriver.common.by import By

  return driver.find_element(By.ID, element_id).text


def open_page(driver: Any, url: str) -> str:
  """Loads the page; returns its summary line once the service answered it."""
  driver.get(url + "/")
  _wait(driver, lambda d: "indexed" in _text(d, "summary"), "the summary line")
  return _text(driver, "summary")


def _settled(driver: Any, before: str) -> str:
  """The status line once the action started (status changed) and finished (not '…ing…')."""
  _wait(
    driver,
    lambda d: _text(d, "status") not in (before, "searching…"),
    "the page to answer",
  )
  return _text(driver, "status")


def search(driver: Any, photo: str) -> tuple[str, list[dict[str, str]]]:
  """Picks `photo` in the page's file input; returns the status line and the match cards
  (id, identity, score text, whether its thumbnail loaded), in the page's order."""
  from selenium.webdriver.common.by import By

  driver.execute_script("document.getElementById('status').textContent = 'picking';")
  driver.find_element(By.ID, "file").send_keys(os.path.abspath(photo))
  status = _settled(driver, "picking")
  return status, cards(driver)


def cards(driver: Any) -> list[dict[str, Any]]:
  """The match cards on the page, once their thumbnails have loaded."""
  script = (
    "return [...document.querySelectorAll('#matches li')].map(li => ({"
    "id: li.dataset.id, identity: li.dataset.identity,"
    "score: li.querySelector('.score').textContent,"
    "below: li.classList.contains('below'),"
    "thumbnail: li.querySelector('img').naturalWidth}));"
  )
  _wait(driver, lambda d: all(c["thumbnail"] for c in d.execute_script(script)), "thumbnails")
  return driver.execute_script(script)


def box_shown(driver: Any) -> bool:
  """Whether the query face's box is drawn over the photo."""
  return bool(driver.execute_script("return !document.getElementById('box').hidden;"))


def enrol(driver: Any, identity: str) -> str:
  """Enrols the photo on the page under `identity`; returns the status line."""
  from selenium.webdriver.common.by import By

  field = driver.find_element(By.ID, "identity")
  field.clear()
  field.send_keys(identity)
  before = _text(driver, "status")
  driver.find_element(By.ID, "enrol-button").click()
  _wait(driver, lambda d: _text(d, "status").startswith(("enrolled", "enrolment failed")), before)
  return _text(driver, "status")


def remove(driver: Any, item_id: str) -> str:
  """Clicks the remove button of the card of `item_id`, accepts the question; returns the
  status line."""
  from selenium.webdriver.common.by import By

  for card in driver.find_elements(By.CSS_SELECTOR, "#matches li"):
    if card.get_attribute("data-id") == item_id:
      card.find_element(By.CSS_SELECTOR, "button.delete").click()
      break
  else:
    raise AssertionError(f"no card of {item_id!r} on the page")
  _wait(driver, lambda d: d.switch_to.alert, "the confirmation")
  driver.switch_to.alert.accept()
  _wait(driver, lambda d: _text(d, "status").startswith(("removed", "removal failed")), "removal")
  return _text(driver, "status")


def main() -> None:
  parser = argparse.ArgumentParser(description="The web page's screenshot over a real index.")
  parser.add_argument("--index", required=True, help="index folder (served read-only)")
  parser.add_argument("--photo", required=True, help="the photo searched")
  parser.add_argument("--screenshot", required=True, help="PNG written")
  args = parser.parse_args()
  from facetriplet.search.searcher import Searcher
  from facetriplet.serving.app import make_app
  from facetriplet.serving.server import ServerThread

  with ServerThread(make_app(Searcher.open(args.index))) as server, chromium() as driver:
    print(open_page(driver, server.url))
    status, found = search(driver, args.photo)
    print(status)
    for card in found:
      print(f"  {card['score']:<28} {card['identity']:<24} {card['id']}")
    driver.save_screenshot(args.screenshot)
  print(f"wrote {args.screenshot}")


if __name__ == "__main__":
  main()
