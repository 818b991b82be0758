"""``mlr run``: the ML-LR method end to end, as a stage folder.

``config`` holds every option (``RunConfig``) and ``presets`` the settings each kind of model gets,
in full and with ``--quick``; ``data`` prepares what every stage reads; ``arms`` fine-tunes and
evaluates the arms, each seed in a worker process; ``pipeline`` runs the steps in their order:
data, the aligned model, analysis, the arms, the report.
"""
