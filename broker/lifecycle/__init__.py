"""What happens to a credential after its mint: liveness, revocation, expiry (the reaper)."""
