"""Keyed state: user-facing state objects, key groups and state backends."""
