"""Evaluating trained models on sites' held-out test cases and summarising the results."""
