"""The library's one-line error type, in a module of its own so that the measuring processes (a cell, the
collector) can raise it without importing the config machinery (YAML, schema)."""


class ConfigError(ValueError):
    """A configuration problem, phrased as one line: where, and what was expected."""
