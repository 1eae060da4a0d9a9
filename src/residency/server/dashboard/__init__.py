"""The coordinator's live, read-only web dashboard: runs, rounds, countries' budgets, nodes."""
