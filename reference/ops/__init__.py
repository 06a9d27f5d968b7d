"""Ops, one per file."""
