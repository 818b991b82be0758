"""Analysis of an aligned model: the security probe (``probe``), the module robustness map
(``robustness``, by perturbing one module at a time and replaying from cached layer inputs) and the
proxy-guided search of Mods_Robust (``search``); ``pipeline`` runs the three stages over an
``AnalysisConfig``."""
