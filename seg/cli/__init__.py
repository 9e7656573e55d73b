"""Console entry points: thin wrappers around the engine."""
