"""Tamper evidence over the ledger: RFC 6962 Merkle tree, proofs, signed checkpoints, witnesses."""
