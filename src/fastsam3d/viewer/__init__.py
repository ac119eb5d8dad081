"""Viewing results: headless PNG overlays (matplotlib)."""
