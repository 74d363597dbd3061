"""<workdir>/demo.json: the settings of a demo run and the seconds each finished step took, so the
same command resumes, and changed settings redo only what they invalidate."""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any, Optional

from facetriplet import atomic
from facetriplet.demo.settings import DATA_KEYS
from facetriplet.errors import UserError

STATE = "demo.json"
OUTPUTS = (
  "faces",
  "tfrecords",
  "heldout",
  "train",
  "export",
  "index",
  "retrieve",
  "submissions",
  "evaluate",
  "eval",
  "logs",
)  # steps and their folders
TRAINED = OUTPUTS[3:-1]  # redone when only training settings change (epochs, P, K, lr)


class State:
  """<workdir>/demo.json: the settings of the run and the seconds each finished step took."""

  def __init__(self, workdir: str, settings: dict[str, Any], fresh: bool):
    self.path = os.path.join(workdir, STATE)
    self.settings = settings
    self.done: dict[str, float] = {}
    self.order: list[str] = []
    old: Optional[dict[str, Any]] = None
    if os.path.isfile(self.path):
      with open(self.path, encoding="utf-8") as f:
        old = json.load(f)
    elif os.path.isdir(workdir) and os.listdir(workdir):
      raise UserError(
        f"{workdir} is not empty and was not written by the demo (no {STATE}): "
        "pass another --workdir, or empty the folder"
      )
    if old is not None and (fresh or old.get("settings") != settings):
      before = old.get("settings", {})
      same_data = all(before.get(k) == settings.get(k) for k in DATA_KEYS) and not fresh
      redo = TRAINED if same_data else OUTPUTS
      why = "--fresh" if fresh else f"the {'training' if same_data else 'data'} settings changed"
      print(f"{workdir}: {why}; removing {', '.join(redo)}")
      for name in redo:
        shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)
      old["done"] = {k: v for k, v in old.get("done", {}).items() if k not in redo}
    self.done = dict((old or {}).get("done", {}))
    if self.done:
      print(f"{workdir}: resuming; finished earlier: {', '.join(self.done)}")
    os.makedirs(workdir, exist_ok=True)
    self.save()

  def save(self) -> None:
    atomic.write_json(self.path, {"version": 1, "settings": self.settings, "done": self.done})

  def step(self, name: str, title: str, fn) -> None:
    print(f"\n=== {name}: {title}", flush=True)
    self.order.append(name)
    if name in self.done:
      print(f"  done in an earlier run ({self.done[name]:.0f} s); skipped")
      return
    start = time.time()
    fn()
    self.done[name] = round(time.time() - start, 1)
    self.save()
    print(f"  [{name}: {self.done[name]:.0f} s]", flush=True)
