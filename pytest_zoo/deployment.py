"""The old path of :mod:`pytest_zoo.conformance.deployment` (deployability, DEPLOY_EXCEPTIONS).

Kept as a path because the README, error messages and users' code import it from here.
"""

from .conformance.deployment import *  # noqa: F403
