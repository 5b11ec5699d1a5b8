"""A config file that is not UTF-8, given with ``snakemake --configfile``, gets the same one line as any other
bad config: ``<file>:<line>: not UTF-8 text (byte 0x..); save the file as UTF-8``.

Snakemake reads ``--configfile`` in its command line, before the Snakefile (where every other config check
lives) runs, and its loader lets a ``UnicodeDecodeError`` out as a traceback. ``setup.sh`` puts a one-line
``.pth`` file into the virtualenv that calls :func:`install`; that adds an import hook which, when (and only
when) Snakemake's ``snakemake.common.configfile`` is imported, wraps its loader so the file is checked as
UTF-8 first and a failure is raised as Snakemake's own ``WorkflowError`` (printed without a traceback).
Nothing else in Snakemake changes, and no other process pays more than this module's import.
"""

import importlib.abc
import importlib.util
import sys
from pathlib import Path

from kvharness.errors import ConfigError, utf8_text

TARGET = "snakemake.common.configfile"


def check_utf8(module, load):
    """``load`` (Snakemake's ``_load_configfile``) behind a UTF-8 check of a file given by path."""
    def load_checked(configpath_or_obj, *args, **kwargs):
        if isinstance(configpath_or_obj, (str, Path)):
            try:
                utf8_text(configpath_or_obj, Path(configpath_or_obj).read_bytes(), "save the file as UTF-8")
            except ConfigError as exc:
                raise module.WorkflowError(str(exc)) from None
            except OSError:
                pass  # Snakemake's own message for a missing or unreadable file stays
        return load(configpath_or_obj, *args, **kwargs)
    return load_checked


class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)  # one import, then out of the way
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            if hasattr(module, "_load_configfile") and hasattr(module, "WorkflowError"):
                module._load_configfile = check_utf8(module, module._load_configfile)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Arm the hook (idempotent; the ``.pth`` calls it at interpreter start, before anything imports Snakemake)."""
    if TARGET not in sys.modules and not any(isinstance(finder, _Hook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Hook())
