"""Report: tables (before/after, evaluation, comparison, selection and search tables in Markdown,
report.json and report.md, and the plots)."""
