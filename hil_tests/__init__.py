"""Qualification suite for a plate: one suite, any device URL (default: the simulator)."""
