"""The library's error types, in a base module of their own: the measuring processes (a cell, the collector)
raise them without importing the config machinery (YAML, schema), and two modules that raise the same error
need not import each other (which made import circles: axes/pressure, spec/tokenizer, identity/launcher)."""


class ConfigError(ValueError):
    """A configuration problem, phrased as one line: where, and what was expected."""


def utf8_text(path, data: bytes, advice: str) -> str:
    """``data`` read from ``path`` as UTF-8; else one ConfigError naming the file, the line and the byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); {advice}") from None


class SpecError(ValueError):
    """A load spec that cannot run; ``str()`` is the one line to print (kvharness.loadgen.spec)."""


class AxisError(ValueError):
    """A swept value that cannot be applied; the message is one line without the key path (kvharness.plan.axes)."""


class StackLaunchError(RuntimeError):
    """The stack did not come up; the message ends with the tail of its log (kvharness.stacks.launcher)."""
