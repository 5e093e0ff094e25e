"""Local training at one site: loss, optimizer, inference and metrics (no transport here)."""
