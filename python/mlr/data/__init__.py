"""Data: the user's prompt files (``prompts``), the probe's harmful/benign split
(``security_data``), instruction data from files or the embedded corpus (``instructions``) and the
corpus itself (``corpus``). Text only: nothing here tokenizes or imports a model."""
