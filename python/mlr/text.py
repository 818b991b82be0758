"""Wording shared by messages, reports and figures."""

from __future__ import annotations


def plural(count: int, noun: str) -> str:
    """``count`` and ``noun``, with an ``s`` unless ``count`` is 1: ``1 module``, ``3 seeds``."""
    return f"{count} {noun}" + ("" if count == 1 else "s")
