"""Scaling-law fitting and reports (later issue)."""
