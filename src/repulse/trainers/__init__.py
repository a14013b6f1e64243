"""One training loop and one small trainer per algorithm."""
