"""What a researcher reads: report.md with figures, built only from the run directory."""
