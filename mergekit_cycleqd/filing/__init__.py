"""Filing: where a scored child is recorded, and the archives derived from that record.

- ``ledger``: the SQLite ledger, one transaction per model (the run's source of truth).
- ``archive``: one grid per task; replayed from the ledger, never stored separately.
- ``runfolder``: the run folder's layout, the stored recipe and resume checks.
"""
