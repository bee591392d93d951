"""The report of a scale: analyses (analyze), tables and figures, REPORT.md (build)."""
