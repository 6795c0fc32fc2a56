"""The exchange: one orchestrator (:mod:`broker.exchange.pipeline`) and its steps —
``attestation`` / ``parent`` / ``delegation`` (authorize), ``mint`` (issue), ``attempt`` (record)."""
