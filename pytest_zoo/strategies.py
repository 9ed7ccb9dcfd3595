"""The old path of :mod:`pytest_zoo.conformance.strategies` (the Hypothesis strategies).

Kept as a path because the README, error messages and users' code import it from here.
"""

from .conformance.strategies import *  # noqa: F403
