"""Evaluation of a model (``evaluate``: ASR, over-refusal, held-out loss, task accuracy, probe
separation; ``generation`` and ``judge`` underneath) and the report of ``mlr run`` (``report``)."""
