"""The package's import graph runs one way, down the data flow, and no module grows past ~400 lines.

Stages, in data-flow order: foundations (errors, atomic, config_files, metrics, synthetic,
configs, ...) < data < training < search < evaluation and serving (which do not import each
other) < demo. A module may import its own stage or an
earlier one, never a later one; the library never imports the tools. Every import counts,
including those inside functions.
"""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "facetriplet")
STAGES = {"data": 1, "training": 2, "search": 3, "evaluation": 4, "serving": 4, "demo": 5}
MAX_LINES = 420


def _stage(module: str) -> int:
  parts = module.split(".")
  return STAGES.get(parts[1], 0) if len(parts) > 1 else 0


def _modules():
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
        yield rel.removesuffix(".__init__"), path


def _imports(path: str):
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read())
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      yield node.module
      for alias in node.names:  # `from facetriplet.data import faces` imports the module
        yield f"{node.module}.{alias.name}"


def test_every_module_is_in_a_known_stage():
  found = {m for m, _ in _modules()}
  assert "facetriplet.data.faces" in found and "facetriplet.search.index" in found
  assert "facetriplet.serving.app" in found
  for module in found:
    parts = module.split(".")
    if len(parts) > 2:
      assert parts[1] in STAGES or parts[1] == "configs", module


@pytest.mark.parametrize("module,path", sorted(_modules()))
def test_imports_go_down_the_data_flow(module, path):
  own = _stage(module)
  for target in _imports(path):
    assert not target.startswith("facetriplet_tools"), f"{module} imports the tool {target}"
    if target.startswith("facetriplet.") or target == "facetriplet":
      assert _stage(target) <= own, (
        f"{module} (stage {own}) imports {target} (stage {_stage(target)}), a later stage"
      )
      if _stage(target) == own and own:
        assert target.split(".")[1] == module.split(".")[1], (
          f"{module} imports {target}: evaluation and serving stand side by side"
        )


@pytest.mark.parametrize("module,path", sorted(_modules()))
def test_modules_stay_small(module, path):
  with open(path, encoding="utf-8") as f:
    lines = sum(1 for _ in f)
  assert lines <= MAX_LINES, f"{module} has {lines} lines: split it by concern"
