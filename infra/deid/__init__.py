"""Deployment helpers for de-identification (PS3.15 Annex E)."""
