"""The ground floor: what every stage (``tasks``, ``backbones``, ``probes``, ``analysis``) may import.

``errors`` (one error type, did-you-mean), ``plugins`` (user modules named by ``--plugin``), ``io`` (atomic writes, stable hashes), ``registry`` (lazy named
entries with entry points), ``results`` (the result-row schema) and ``rundir`` (the layout of a results
directory). Nothing here imports a stage or the top floor (``probebench.cli``, ``pipeline``, ``sweep``,
``config``), and no stage imports the top floor.
"""
