"""The old path of :mod:`pytest_zoo.guards.network` (the network guard).

Kept as a path because the README, error messages and users' code import it from here.
"""

from .guards.network import *  # noqa: F403
