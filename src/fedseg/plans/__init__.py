"""Compute plans: which sites train each round, with what instructions, and how updates combine.

Pure numpy code over weight dictionaries; no torch training and no networking here.
"""
