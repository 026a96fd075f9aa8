"""AgentBench's tasks, scored as AgentBench scores them.

- ``dbbench`` (+ ``dbbench_protocol``, ``dbbench_tasks``, ``db_backends``, ``dbbench_sqlite``,
  ``dbbench_mysql``): DB tasks on SQLite or MySQL/MariaDB.
- ``os_interaction`` (+ ``os_tasks``, ``os_checks``): OS tasks in throw-away sandboxes.
- ``taskserver``: the agent side of AgentBench's own task-server HTTP protocol.
"""
