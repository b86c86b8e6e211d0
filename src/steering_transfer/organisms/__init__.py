"""organisms."""
