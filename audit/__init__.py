"""`prguard-audit`: the operator's tool for the audit trail (verify the chain, show records)."""
