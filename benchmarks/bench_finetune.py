r"""Does a fine-tuned model really differ from its start? A paired bootstrap over people.

A difference of 0.004 mAP@R on celeba_199's 40 val people can be chance: which people happen to
be in the val split moves both models. This benchmark scores the start and each fine-tuned model
on the very same photos (bench_pretrained's sets and cached TFRecords, leave-one-out, test-time
flip as the tools embed), keeps each query's top-1 hit and AP@R (MAP@R's per-query term,
`metrics.metrics_from_ranked` on that query's ranking), and resamples the set's people with
replacement (--resamples times, seed 0): each resample is a val split that could have been drawn,
and the difference of the two models' means over its queries is one draw of the difference
(approximately: each query's AP@R is not recomputed against the resampled gallery). It
reports the difference on the whole set, its 95% interval (2.5th-97.5th percentile of the draws)
and the shares of draws in which the fine-tuned model is ahead and behind (the rest are ties).
Queries whose person has no other photo are left out, as the library's metrics leave them out.

  python -m benchmarks.bench_finetune --start=dlib_resnet \
      --models=finetuned=runs/ft_c/export,finetuned_turned=runs/ft_t/export --try_turned=on

It writes benchmarks/results/finetune_significance.json (--name_prefix).
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

import numpy as np

from benchmarks import bench_pretrained, common


def per_query(emb: np.ndarray, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """Each query's top-1 hit (0/1) and AP@R, leave-one-out, by cosine similarity; NaN for a query
  whose person has no other photo (the library leaves it out of its means too)."""
  from facetriplet import metrics  # pylint: disable=g-import-not-at-top

  labels = np.asarray(labels)
  ids, _ = metrics.encode_labels(labels, labels)
  counts = np.bincount(ids)
  _, ranked = metrics.ranked_labels(emb, emb, ids, int(counts.max()), leave_one_out=True)
  top1, ap = np.full(len(ids), np.nan), np.full(len(ids), np.nan)
  for i in np.flatnonzero(counts[ids] > 1):
    m = metrics.metrics_from_ranked(ranked[i : i + 1], ids[i : i + 1], [counts[ids[i]] - 1], (1,))
    top1[i], ap[i] = m["top1"], m["map@r"]
  return top1, ap


def paired_bootstrap(
  a: np.ndarray, b: np.ndarray, groups: Sequence[str], resamples: int, seed: int = 0
) -> tuple[float, float, float, float, float]:
  """(mean(b) - mean(a), its 2.5th and 97.5th percentile, share of draws > 0, share < 0) over
  resamples of `groups` with replacement; rows where a or b is NaN are left out."""
  keep = np.isfinite(a) & np.isfinite(b)
  groups = np.asarray(groups)[keep]
  diff = (b - a)[keep]
  names = np.unique(groups)
  members = [np.flatnonzero(groups == n) for n in names]
  rng = np.random.default_rng(seed)
  draws = np.empty(resamples)
  for r in range(resamples):
    rows = np.concatenate([members[i] for i in rng.integers(0, len(names), len(names))])
    draws[r] = diff[rows].mean()
  low, high = np.percentile(draws, [2.5, 97.5])
  return (
    float(diff.mean()),
    float(low),
    float(high),
    float(np.mean(draws > 0)),
    float(np.mean(draws < 0)),
  )


def compare_row(a: np.ndarray, b: np.ndarray, groups: Sequence[str], resamples: int) -> list:
  """Table cells: start mean, model mean, difference, 95% interval, 'P(ahead) / P(behind)'."""
  diff, low, high, ahead, behind = paired_bootstrap(a, b, groups, resamples)
  # Differences as signed strings: the report would print small floats as 1.6e-03.
  return [
    round(float(np.nanmean(a)), 4),
    round(float(np.nanmean(b)), 4),
    f"{diff:+.4f}",
    f"[{low:+.4f}, {high:+.4f}]",
    f"{ahead:.3f} / {behind:.3f}",
  ]


def columns(first: Sequence[str]) -> list[str]:
  out = list(first)
  for metric in ("top-1", "mAP@R"):
    out += [f"start {metric}", f"model {metric}", f"diff {metric}", "95% interval"]
    out += ["P(ahead / behind)"]
  return out


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--start", default="dlib_resnet", help="the start: export or network name")
  parser.add_argument("--models", required=True, help="name=export folder, comma-separated")
  parser.add_argument("--sets", default="celeba,lfw")
  parser.add_argument("--try_turned", default="on", choices=("export", "on", "off"))
  parser.add_argument("--resamples", type=int, default=10000)
  parser.add_argument("--workdir_root", default=bench_pretrained.DEFAULT_ROOT)
  parser.add_argument("--name_prefix", default="finetune")
  args = parser.parse_args(argv)
  from facetriplet.search import embedder, gallery  # pylint: disable=g-import-not-at-top
  from facetriplet.training import export  # pylint: disable=g-import-not-at-top

  extractors = {}

  def scored(source: str, set_name: str):
    if source not in extractors:
      extractors[source] = embedder.load_embedder(export.resolve_model(source), batch_size=64)
    extractor = extractors[source]
    rec = bench_pretrained.records(
      args.workdir_root, set_name, extractor.metadata["crop"], args.try_turned
    )
    emb, kept, _ = gallery.embed_gallery(
      extractor, rec, splits=[bench_pretrained.SETS[set_name][4]], progress=False
    )
    labels = [e.identity for e in kept]
    return rec, labels, per_query(emb, labels)

  sets = [s.strip() for s in args.sets.split(",") if s.strip()]
  models = [tuple(m.split("=", 1)) for m in args.models.split(",") if m.strip()]
  if not models or any(len(m) != 2 for m in models):
    parser.error(f"--models={args.models!r}: give name=export folder, comma-separated")
  rows = []
  for s in sets:
    start_rec, labels, (start_top1, start_ap) = scored(args.start, s)
    for name, source in models:
      rec, model_labels, (top1, ap) = scored(source, s)
      if rec != start_rec or model_labels != labels:
        raise SystemExit(
          f"{name} and the start were cropped differently on {s} ({rec} vs {start_rec}): a paired "
          "comparison needs the same photos; pass --try_turned=on or off"
        )
      row = [name, s, int(np.sum(np.isfinite(top1))), len(set(labels))]
      for a, b in ((start_top1, top1), (start_ap, ap)):
        row += compare_row(a, b, labels, args.resamples)
      bench_pretrained.log(f"{name} on {s}: {row}")
      rows.append(row)
  common.write_result(
    f"{args.name_prefix}_significance",
    "Fine-tuned against its start: paired bootstrap over people",
    columns(["model", "set", "queries", "people"]),
    rows,
    notes=(
      f"start = {args.start}; crops try_turned {args.try_turned}; {args.resamples} resamples of "
      "the set's people (seed 0); diff = model - start on all queries with a match; 95% interval "
      "and P(ahead / behind) (shares of resamples with diff > 0 and < 0; the rest are ties) over "
      "the resamples. lfw = lfw_2to4 val, celeba = "
      "celeba_199 val (bench_pretrained's sets)."
    ),
  )
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
