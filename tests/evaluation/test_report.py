"""The report writer: Markdown tables of metrics."""

from facetriplet.evaluation import report


def test_to_markdown():
  one = {"top1": 0.5, "num_queries": 3}
  assert (
    report.markdown_table(one) == "| metric | value |\n|---|---:|\n| top1 | 0.5000 |\n"
    "| num_queries | 3 |\n"
  )
  table = report.markdown_table({"lbp": one, "embedding": {"top1": 0.9, "map@r": 0.25}})
  lines = table.strip().split("\n")
  assert lines[0] == "| method | top1 | num_queries | map@r |"
  assert lines[2] == "| lbp | 0.5000 | 3 |  |"
  assert lines[3] == "| embedding | 0.9000 |  | 0.2500 |"


# --- Verification ------------------------------------------------------------------------------
