"""Call records: every call's record, turns, events and recording, in SQLite or PostgreSQL."""
