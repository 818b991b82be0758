"""Data: the user's prompt and instruction files, the probe's harmful/benign split, the embedded
corpus and which part of it each stage uses, and instruction examples as token ids."""
