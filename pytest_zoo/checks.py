"""The old path of :mod:`pytest_zoo.conformance.checks` (ZooConformance, ConformanceFailure).

Kept as a path because the README, error messages and users' code import it from here.
"""

from .conformance.checks import *  # noqa: F403
