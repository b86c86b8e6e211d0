"""The library's error type, free of heavy imports so the pytest plugin can load it cheaply."""

from __future__ import annotations


class SteeringTransferError(ValueError):
    """Raised for bad input to steering-transfer; the message names the parameter and the fix."""
