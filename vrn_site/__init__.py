"""Site machinery of Verified Reading Notes: the claims ledger, its checks, the MkDocs plugin,
the pytest plugin that records verifying runs, and the notebook re-executor. No paper code here."""
