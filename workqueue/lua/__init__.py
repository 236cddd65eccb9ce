"""The Lua scripts workqueue runs inside Redis, one ``.lua`` file each beside this module, and the
one loader that reads them. Each file's comments say what its KEYS and ARGV are where the module
that sends it does not."""

from __future__ import annotations

from functools import cache
from importlib.resources import files


@cache
def script(name: str) -> str:
    """The text of ``<name>.lua`` (read once per process)."""
    return files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
