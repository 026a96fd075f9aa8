"""Search: which child to make next, and the loop that makes them.

- ``loop``: ``CycleQD`` with its ask/tell surface (``ask(g)`` -> ``Job``,
  ``tell(JobResult)``), seeds, bin ranges and resume.
- ``sampling``: parent selection from the active archive (elite or uniform).
- ``jobs``: the ``Job``/``JobResult`` messages between the loop and its workers.
- ``worker`` / ``executor``: a worker merges and scores one job; executors run
  workers in process or on Ray.
- ``progress``: the console progress line.
"""
