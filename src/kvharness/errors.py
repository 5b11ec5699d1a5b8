"""The library's one-line error type, in a module of its own so that the measuring processes (a cell, the
collector) can raise it without importing the config machinery (YAML, schema)."""


class ConfigError(ValueError):
    """A configuration problem, phrased as one line: where, and what was expected."""


def utf8_text(path, data: bytes, advice: str) -> str:
    """``data`` read from ``path`` as UTF-8; else one ConfigError naming the file, the line and the byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); {advice}") from None
