"""The zoo's knowledge: the family table, the task vocabulary, choosing models by pattern.

Data and lookups only, importing neither torch nor torchvision at import time, so the pytest
entry point can read it in every run of every project that installed the kit.
"""
