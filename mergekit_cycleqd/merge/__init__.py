"""Merge: how a child is born (the mergekit plugin core; imports nothing above it).

- ``methods``: the ``cycleqd`` and ``cycleqd_genome`` mergekit merge methods.
- ``mutations``: one module per mutation kind and the name -> operator table.
- ``specs``: the crossover and mutation settings (the recipe's very sections).
- ``genome`` / ``materialize``: the compact exact representation of a child and
  its expansion into weights; ``svd_cache``: the experts' task-vector SVD factors.
- ``breeder``: crossover + mutation of two parents, hiding genome vs weights children.
- ``modelset`` / ``weights``: reading safetensors models; the weight-source protocol.
- ``config_check``: parameter checks mergekit's YAML path does not make.
"""
