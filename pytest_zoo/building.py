"""The old path of :mod:`pytest_zoo.models.building` (the offline and structural builds).

Kept as a path because the README, error messages and users' code import it from here.
"""

from .models.building import *  # noqa: F403
