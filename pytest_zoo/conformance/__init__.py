"""The conformance checks: Hypothesis strategies, per-task inputs and verdicts, the check bodies,
failure rendering, and ``ZooConformance``, the class a user subclasses to gate their own code."""
