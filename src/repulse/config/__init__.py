"""Typed flag groups (stdlib only), the parser and cross-group validation."""
