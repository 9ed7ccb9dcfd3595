"""Root conftest: the project's own test suite runs real pytest sessions through ``pytester``."""
