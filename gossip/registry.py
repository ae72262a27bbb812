"""Names to options: the registries of algorithms and tasks, the ``option`` field that their
options dataclasses use, and :class:`ConfigError`. This module knows no algorithm or task: they
import it to register themselves, and :mod:`gossip.config` reads the registries."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A config problem, reported as one line naming the key and what is allowed.

    Line breaks that reach the message from user text are escaped, so it always stays one line."""

    def __init__(self, message: str) -> None:
        super().__init__(message.replace("\r", "\\r").replace("\n", "\\n"))


def option(default: Any = dataclasses.MISSING, help: str = "", **bounds: float) -> Any:
    """A dataclass field with a help text and numeric bounds (``gt``, ``ge``, ``lt``, ``le``)."""
    metadata = {"help": help, "bounds": bounds}
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata=metadata)
    return field(default=default, metadata=metadata)


def keywords_field(help: str = "") -> Any:
    """A ``dict`` field that collects the keys of its section that no other field names (the
    keywords of a class that the section names). Its dataclass defines ``check_keywords(path,
    parse_dataclass)``, which the config parser calls to validate them."""
    return field(default_factory=dict, metadata={"help": help, "bounds": {}, "keywords": True})


def suggest(word: str, candidates: Any) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``candidates`` to ``word``, or nothing."""
    close = difflib.get_close_matches(word, [str(c) for c in candidates], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass
class Registry:
    """Maps a name to the options dataclass (and the implementation) of an algorithm or a task."""

    kind: str
    entries: dict[str, tuple[type, Any]] = field(default_factory=dict)

    def register(self, name: str, options: type, implementation: Any) -> None:
        """Make ``name`` resolve to ``options`` (its config keys) and ``implementation``."""
        self.entries[name] = (options, implementation)

    def options(self, name: str, path: str) -> type:
        """The options dataclass of ``name``; a :class:`ConfigError` at ``path`` when unknown."""
        if name not in self.entries:
            raise ConfigError(f"{path}: unknown {self.kind} {name!r}{suggest(name, self.entries)}; "
                              f"allowed: {', '.join(sorted(self.entries))}")
        return self.entries[name][0]

    def implementation(self, name: str) -> Any:
        """What ``name`` was registered with (a class)."""
        return self.entries[name][1]
