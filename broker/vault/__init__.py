"""The Vault/OpenBao client (hvac) shared by the vault-database target, KV secrets and Transit keys."""
