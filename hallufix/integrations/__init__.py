"""Adapters that let other evaluation harnesses drive hallufix (one sub-package per harness; light to import)."""
