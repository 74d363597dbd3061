"""The service's web page in a real browser (headless Chromium through Selenium, `make test`
installs both): search a photo, enrol it under a name, remove it, each checked against the library
(`Searcher.search`) and the index folder on disk. Skipped, with the reason, where no browser can
start (e.g. not root, so `make test` could not apt-get Chromium).

Set FACETRIPLET_SCREENSHOT=<file.png> to keep the page's screenshot.
"""

import os
import re
import shutil

import pytest

from benchmarks import browser
from facetriplet.search.searcher import Searcher
from facetriplet.serving.app import make_app
from facetriplet.serving.server import ServerThread
from tests.serving.test_serve import setup  # noqa: F401  (the fixture)

ZED = "<i>zed</i> <img class=x src=/ onerror=document.title='pwned'>"


@pytest.fixture(scope="module")
def driver():
  chromium = browser.chromium()
  try:
    found = chromium.__enter__()
  except browser.BrowserUnavailable as e:
    pytest.skip(f"no browser: {e}")
  yield found
  chromium.__exit__(None, None, None)


def _scores(cards):
  return [float(re.search(r"· (-?[0-9.]+)", c["score"]).group(1)) for c in cards]


def test_page_searches_enrols_and_removes(setup, driver, tmp_path):  # noqa: F811
  index_dir = str(tmp_path / "index")
  shutil.copytree(setup["index"], index_dir)
  query = setup["queries"][0]  # q_alice_0.png
  reference = Searcher.open(setup["index"]).search(query, k=10)
  with ServerThread(make_app(Searcher.open(index_dir), batch_window_ms=5)) as server:
    assert browser.open_page(driver, server.url).startswith("9 faces indexed")

    # Search: the cards are the library's matches, in order, each with its face thumbnail.
    status, cards = browser.search(driver, query)
    assert status.startswith("face found · 9 matches"), status
    assert [c["identity"] for c in cards] == [m.identity for m in reference]
    assert [c["id"] for c in cards] == [m.item.rel_path for m in reference]
    assert _scores(cards) == pytest.approx([round(m.score, 3) for m in reference], abs=1.5e-3)
    assert cards[0]["identity"] == "alice" and all(c["thumbnail"] == 112 for c in cards)
    assert browser.box_shown(driver) == (reference.box is not None)

    # Enrol the photo under a name (markup in it is shown as text, never run as HTML): saved to
    # the index folder, then found first by the same photo.
    status = browser.enrol(driver, ZED)
    assert status.startswith("enrolled ") and f"as {ZED}" in status and "10 faces" in status
    on_disk = [i for i in Searcher.open(index_dir).index.items if i.identity == ZED]
    assert len(on_disk) == 1
    cards = browser.cards(driver)
    assert cards[0]["identity"] == ZED and cards[0]["id"] == on_disk[0].id
    assert (
      driver.execute_script("return document.querySelectorAll('#matches i, img.x').length") == 0
    )
    assert (
      driver.execute_script("return document.querySelector('#matches .who').textContent") == ZED
    )
    assert _scores(cards)[0] == pytest.approx(1.0, abs=2e-3) and cards[0]["thumbnail"] == 112
    shot = os.environ.get("FACETRIPLET_SCREENSHOT") or str(tmp_path / "page.png")
    assert driver.save_screenshot(shot) and os.path.getsize(shot) > 10_000

    # Remove it with its card's button: gone from the page and from the folder.
    status = browser.remove(driver, on_disk[0].id)
    assert status == f"removed {on_disk[0].id} · 9 faces indexed", status
    assert on_disk[0].id not in [c["id"] for c in browser.cards(driver)]
    assert not any(i.identity == ZED for i in Searcher.open(index_dir).index.items)
    assert browser.open_page(driver, server.url).startswith("9 faces indexed")
    assert driver.title == "facetriplet face search"  # no script in the name ever ran
