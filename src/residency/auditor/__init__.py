"""The auditor's tools: verify a ledger, report on it, audit a training configuration."""
