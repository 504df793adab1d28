"""Figures for the paper: reads run folders (summary.json, theory.json, probe_rows.json) and draws
PNG + PDF beside them.

`analysis` imports `mitigate`; `mitigate` never imports `analysis` (the library writes only JSON
and Markdown). Not installed: run it from the repository root, `python -m analysis figures DIR`.
"""
