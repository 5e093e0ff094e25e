"""What a researcher reads: report.md, its figures and a self-contained report.html, from the run directory."""
