"""The ``optc`` command: the console script, the dispatcher (:mod:`.main`), one module per
subcommand and what they share (targets, ``--task``, preflight checks, the process launcher)."""
