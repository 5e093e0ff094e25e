"""Benchmark scripts (a package, so that FLARE job processes import these and not the
``benchmarks`` package Opacus installs at the top level of site-packages)."""
