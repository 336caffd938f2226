"""Talking to PostgreSQL: one of each of connect, session settings, conninfo and its redaction,
LSN text, and identifier/literal quoting. Every other package uses these."""
