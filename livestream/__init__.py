"""Shared plumbing of the livestream analytics services: errors, settings, Kafka helpers, CLI."""
