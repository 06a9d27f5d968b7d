"""Generators of the site's figures and tables (imported by ``docs/hooks.py``; not pages, not shipped)."""
