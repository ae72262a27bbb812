"""Names to options: the registries of algorithms and tasks, the ``option`` field that their
options dataclasses use, and :class:`ConfigError`. This module knows no algorithm or task: they
import it to register themselves, and :mod:`gossip.config` reads the registries."""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import re
import typing
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
    """Maps a name to the options dataclass and the implementation of an algorithm or a task.

    A registered name (``dpsgd``) resolves to what was registered. A name with a colon,
    ``module.path:ClassName``, imports ``module.path`` and resolves to ``(ClassName.Options,
    ClassName)``: the class must subclass ``base`` and declare its options dataclass as its
    ``Options`` attribute, whose ``name`` field is typed ``str`` (it holds the path)."""

    kind: str
    base: type
    entries: dict[str, tuple[type, Any]] = field(default_factory=dict)

    def register(self, name: str, implementation: type) -> None:
        """Make ``name`` resolve to ``implementation`` and its ``Options`` dataclass."""
        self.entries[name] = (implementation.Options, implementation)

    def options(self, name: str, path: str) -> type:
        """The options dataclass of ``name``; a :class:`ConfigError` at ``path`` when unknown."""
        return self.resolve(name, path)[0]

    def implementation(self, name: str) -> Any:
        """The class that ``name`` resolves to."""
        return self.resolve(name, f"{self.kind}.name")[1]

    def resolve(self, name: str, path: str) -> tuple[type, Any]:
        """``(options dataclass, class)`` of a registered name or of ``module.path:ClassName``."""
        if name in self.entries:
            return self.entries[name]
        if ":" not in name:
            raise ConfigError(f"{path}: unknown {self.kind} {name!r}{suggest(name, self.entries)}; "
                              f"allowed: {', '.join(sorted(self.entries))}, or module.path:ClassName")
        return self._import(name, path)

    def _import(self, name: str, path: str) -> tuple[type, Any]:
        module_name, _, attribute = name.partition(":")
        if not _DOTTED.match(module_name) or not attribute.isidentifier():
            raise ConfigError(f"{path}: {name!r} is not of the form module.path:ClassName")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and module_name.startswith(exc.name) and \
                    module_name[len(exc.name):][:1] in ("", "."):
                raise ConfigError(f"{path}: no module named {exc.name!r} (from {name!r}); expected "
                                  f"module.path:ClassName with the module importable from sys.path") from None
            raise ConfigError(f"{path}: importing {module_name!r} raised {_raised(exc)}") from exc
        except Exception as exc:
            raise ConfigError(f"{path}: importing {module_name!r} raised {_raised(exc)}") from exc
        cls = getattr(module, attribute, None)
        if cls is None:
            public = [n for n in vars(module) if not n.startswith("_")]
            raise ConfigError(f"{path}: module {module_name!r} has no attribute {attribute!r}"
                              f"{suggest(attribute, public)}; expected module.path:ClassName")
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise ConfigError(f"{path}: {name} is not a subclass of {self.base.__module__}.{self.base.__qualname__}")
        options = getattr(cls, "Options", None)
        if not (isinstance(options, type) and dataclasses.is_dataclass(options)):
            raise ConfigError(f"{path}: {name} has no Options dataclass; declare its options as the "
                              f"class attribute Options = a @dataclass")
        try:
            hint = typing.get_type_hints(options).get("name")
        except Exception as exc:
            raise ConfigError(f"{path}: reading the annotations of {name}.Options raised {_raised(exc)}") from exc
        if hint is not str:
            raise ConfigError(f"{path}: {name}.Options needs a field 'name: str' (it holds the name "
                              f"module.path:ClassName){'' if hint is None else f', not {hint!r}'}")
        return options, cls


_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def _raised(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
