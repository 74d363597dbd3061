"""Apache Beam plumbing shared by the Beam paths of ingest (`data/beam_ingest`) and of the gallery
index (`search/beam_index`): pipeline options from `--runner` plus the tool's leftover arguments,
running a pipeline to the end, and the task files a pipeline reads its work from.

Beam is the optional `beam` extra (`pip install 'facetriplet[beam]'`); nothing here imports it
before a Beam path is asked for, so the local paths never need it.

Runners: `DirectRunner` (this machine; `--direct_num_workers=N --direct_running_mode=
multi_processing` spreads bundles over N processes) and `PrismRunner` (Beam's portable local runner;
it fetches its binary on first use unless `--prism_location` names one) are what the tests and
benchmarks use. `FlinkRunner`, `SparkRunner` and `DataflowRunner` take their own options
(`--flink_master`, `--project`, `--region`, `--temp_location`, ...) the same way; their workers
must see the input, export and output paths (a shared or mounted file system), since outputs are
written with `facetriplet.atomic` (temporary name + rename), which needs a local path.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterable, Sequence

from absl import logging

from facetriplet import atomic
from facetriplet.errors import UserError


def require_beam() -> Any:
  """The `apache_beam` module, or a UserError saying how to install it."""
  try:
    import apache_beam  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise UserError(
      f"--runner needs Apache Beam ({e}): pip install 'facetriplet[beam]' "
      "(or leave --runner out to use the local process pool)"
    ) from None
  return apache_beam


def pipeline_options(runner: str, args: Sequence[str] = ()) -> Any:
  """Beam `PipelineOptions` for `runner` plus the tool's leftover arguments.

  Args:
    runner: a Beam runner name (`DirectRunner`, `PrismRunner`, `FlinkRunner`, ...).
    args: the arguments the tool did not parse (those after `--`), e.g.
      `--direct_num_workers=2` or `--flink_master host:8081`: options and their values.

  Raises:
    UserError: no runner, an unknown one (or one whose extra is missing), or an argument that is
      not an option (`--name[=value]`).
  """
  beam = require_beam()
  if not runner:
    raise UserError("a Beam pipeline needs --runner=<DirectRunner|PrismRunner|FlinkRunner|...>")
  try:  # what beam.Pipeline does with the name, so a wrong one is refused before any work
    beam.runners.runner.create_runner(runner)
  except (ValueError, ImportError) as e:
    raise UserError(f"--runner={runner}: {e}") from None
  args = list(args)
  stray = [
    a
    for i, a in enumerate(args)
    if not a.startswith("--") and (i == 0 or not args[i - 1].startswith("--") or "=" in args[i - 1])
  ]  # not `--name value`
  if stray:
    raise UserError(
      f"unexpected arguments {stray}: Beam pipeline options are passed as "
      "--name=value (or --name value) after --, e.g. -- --direct_num_workers=2"
    )
  if any(a == "--runner" or a.startswith("--runner=") for a in args):
    raise UserError("pass the runner once, as the tool's --runner flag (before --)")
  return beam.options.pipeline_options.PipelineOptions([f"--runner={runner}", *args])


def run(build: Callable[[Any], None], runner: str, args: Sequence[str] = ()) -> None:
  """Builds a pipeline with `build(pipeline)` and runs it to the end.

  Raises:
    UserError: an unknown runner or an option Beam refuses.
    RuntimeError: the pipeline did not finish (the runner's error propagates as raised).
  """
  beam = require_beam()
  options = pipeline_options(runner, args)
  try:
    pipeline = beam.Pipeline(options=options)
  except ValueError as e:  # e.g. "Unexpected pipeline runner"
    raise UserError(f"--runner={runner}: {e}") from None
  build(pipeline)
  logging.info("running the Beam pipeline on %s", runner)
  result = pipeline.run()
  state = result.wait_until_finish()
  if state is not None and str(state).split(".")[-1] not in ("DONE", "UNKNOWN"):
    raise RuntimeError(f"the Beam pipeline ended in state {state} on {runner}")


def write_tasks(path: str, tasks: Iterable[Any]) -> int:
  """Writes one JSON value per line to `path` (atomically); returns the count. A pipeline reads
  it back with `read_tasks`, so the work list travels as a file, not inside the pipeline graph."""
  lines = [json.dumps(t, separators=(",", ":")) for t in tasks]
  atomic.write_text(path, "".join(line + "\n" for line in lines))
  return len(lines)


def read_tasks(pipeline: Any, path: str, label: str = "ReadTasks") -> Any:
  """The PCollection of the JSON values of `path` (`write_tasks`), spread over the workers."""
  beam = require_beam()
  return (
    pipeline
    | label >> beam.io.ReadFromText(os.path.abspath(path))
    | f"{label}Parse" >> beam.Map(json.loads)
    | f"{label}Spread" >> beam.Reshuffle()
  )
