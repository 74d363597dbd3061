"""Scoring retrieval on labelled photos (`evaluate`), and the retrieval grid image (`grid`)."""

from facetriplet.evaluation.evaluation import evaluate  # noqa: F401
