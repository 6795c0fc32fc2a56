"""The broker's signing keys: file keys (ES256 in the state dir) and Vault/OpenBao Transit."""
