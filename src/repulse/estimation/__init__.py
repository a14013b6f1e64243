"""Rare-output probability estimation: exact enumeration, importance sampling, brute force, forecasting."""
