"""The exchange: one orchestrator (verify → authorize → mint → record) and its steps."""
