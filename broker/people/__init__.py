"""People as authorizers: approvals before a mint, and delegations to agents."""
