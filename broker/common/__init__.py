"""Small pure helpers every stage shares: canonical JSON, credential ids, durations."""
