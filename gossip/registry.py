"""Names to components: the :class:`Registry` of each kind of component that a config names, the
``option`` field that options dataclasses use, the check of a section's keywords against a
signature, and :class:`ConfigError`. This module knows no component: each kind's module makes
its registry and registers its built-ins, and :mod:`gossip.config` reads them."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import inspect
import re
import typing
from dataclasses import field
from typing import Any, Callable


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


class Registry:
    """The names of one kind of component (``algorithm``, ``task``, ``topology``, ``codec``,
    ``optimizer``, ``lr_schedule``, ...) and what each resolves to: the class or function that
    makes the component. One mechanism for every kind, so every kind is named the same way and
    every wrong name is the same one-line :class:`ConfigError`.

    A name is one of three things:

    - a registered name (``ring``, ``sign``, ``dpsgd``);
    - a class of ``torch_module`` that subclasses ``base``, by case-insensitive name (``adamw``,
      ``StepLR``);
    - ``module.path:Name``, a class that subclasses ``base`` or, where ``functions`` is true, a
      function (``mypkg.graphs:my_graph``).

    A component's keys come from its ``Options`` dataclass where it has one (:meth:`options`),
    otherwise from the signature of its function or constructor (:func:`check_keywords`).

    >>> kinds = Registry("shape", base=None, functions=True)
    >>> kinds.register("square", lambda side: side * side)
    >>> kinds.implementation("square")(3)
    9
    """

    def __init__(self, kind: str, base: type | None = None, torch_module: Any = None, functions: bool = False) -> None:
        self.kind = kind
        self.base = base
        self.torch_module = torch_module
        self.functions = functions
        self.entries: dict[str, Any] = {}

    def register(self, name: str, implementation: Any) -> None:
        """Make ``name`` resolve to ``implementation``."""
        self.entries[name] = implementation

    def implementation(self, name: str, path: str | None = None) -> Any:
        """The class or function that ``name`` resolves to; a :class:`ConfigError` at ``path``
        (default ``KIND.name``) when it resolves to nothing."""
        path = path or f"{self.kind}.name"
        if name in self.entries:
            return self.entries[name]
        if ":" in name:
            return self._import(name, path)
        torch_classes = self._torch_classes()
        if name.lower() in torch_classes:
            return torch_classes[name.lower()]
        allowed = [*sorted(self.entries), *sorted((c.__name__ for c in torch_classes.values()), key=str.lower)]
        raise ConfigError(f"{path}: unknown {self.kind} {name!r}{suggest(name, allowed)}; "
                          f"allowed: {', '.join(allowed)}, or module.path:Name")

    def options(self, name: str, path: str) -> type:
        """The options dataclass of the class ``name`` resolves to (its ``Options``). A class named
        by its path that inherits a built-in's ``Options`` (whose ``name`` field holds the built-in's
        name) gets a subclass of those options whose ``name`` holds the path."""
        cls = self.implementation(name, path)
        options = getattr(cls, "Options", None)
        if not (isinstance(options, type) and dataclasses.is_dataclass(options)):
            raise ConfigError(f"{path}: {name} has no Options dataclass; declare its options as the "
                              f"class attribute Options = a @dataclass")
        try:
            hint = typing.get_type_hints(options).get("name")
        except Exception as exc:
            raise ConfigError(f"{path}: reading the annotations of {name}.Options raised {_raised(exc)}") from exc
        if name in self.entries or hint is str:
            return options
        return _named_options(options, name)

    def _torch_classes(self) -> dict[str, type]:
        if self.torch_module is None:
            return {}
        return {n.lower(): c for n, c in vars(self.torch_module).items()
                if isinstance(c, type) and issubclass(c, self.base) and c is not self.base and not n.startswith("_")}

    def _import(self, name: str, path: str) -> Any:
        module_name, _, attribute = name.partition(":")
        if not _DOTTED.match(module_name) or not attribute.isidentifier():
            raise ConfigError(f"{path}: {name!r} is not of the form module.path:Name")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and module_name.startswith(exc.name) and \
                    module_name[len(exc.name):][:1] in ("", "."):
                raise ConfigError(f"{path}: no module named {exc.name!r} (from {name!r}); expected "
                                  f"module.path:Name with the module importable from sys.path") from None
            raise ConfigError(f"{path}: importing {module_name!r} raised {_raised(exc)}") from exc
        except Exception as exc:
            raise ConfigError(f"{path}: importing {module_name!r} raised {_raised(exc)}") from exc
        target = getattr(module, attribute, None)
        if target is None:
            public = [n for n in vars(module) if not n.startswith("_")]
            raise ConfigError(f"{path}: module {module_name!r} has no attribute {attribute!r}"
                              f"{suggest(attribute, public)}; expected module.path:Name")
        is_class = isinstance(target, type)
        if is_class and (self.base is None or issubclass(target, self.base)):
            return target
        if not is_class and self.functions and callable(target):
            return target
        wanted = f"a subclass of {self.base.__module__}.{self.base.__qualname__}" if self.base is not None else "a class"
        raise ConfigError(f"{path}: {name} is not {wanted}{' or a function' if self.functions else ''}")


@functools.lru_cache(maxsize=None)
def _named_options(options: type, name: str) -> type:
    """``options`` with its ``name`` field a string that defaults to ``name``."""
    return dataclasses.make_dataclass(options.__name__, [("name", str, option(name, help=f"the class {name}"))],
                                      bases=(options,))


def check_keywords(target: Callable, section: Any, path: str, reserved: tuple[str, ...] = (),
                   require: bool = True) -> None:
    """Each key of ``section.options`` (the keys of a section that its dataclass does not name)
    must be a parameter of ``target``, a class or a function, other than ``reserved``, and of the
    type its annotation or default says; with ``require``, every parameter without a default must
    be given. One :class:`ConfigError` line otherwise."""
    parameters = inspect.signature(target).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    allowed = [k for k, p in parameters.items() if k not in reserved
               and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    fixed = [f.name for f in dataclasses.fields(section) if f.name != "options"]
    name = getattr(target, "__name__", str(target))
    for key, value in section.options.items():
        if key not in allowed:
            raise ConfigError(f"{path}{key}: unknown key{suggest(key, fixed + allowed)}; allowed: "
                              f"{', '.join(fixed)} and {name}'s keywords {', '.join(allowed) or '(none)'}")
        _check_type(value, parameters[key], f"{path}{key}")
    missing = [k for k in allowed if parameters[k].default is inspect.Parameter.empty and k not in section.options]
    if require and missing:
        raise ConfigError(f"{path}{missing[0]}: missing; {name} requires it (it has no default)")


def _check_type(value: Any, parameter: inspect.Parameter, path: str) -> None:
    """A keyword annotated as (or defaulting to) a bool, an int, a float, a string or a tuple of
    numbers takes a value of that kind."""
    annotation = _PLAIN_TYPES.get(parameter.annotation, parameter.annotation)
    default = parameter.default
    kind = annotation if annotation in _PLAIN_TYPES.values() else \
        None if default is inspect.Parameter.empty or default is None else type(default)
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    if kind is bool:
        ok, expected = isinstance(value, bool), "true or false"
    elif kind is int and annotation is int:
        ok, expected = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif kind in (int, float):  # torch writes some float defaults as ints (SGD's momentum=0)
        ok, expected = number(value), "a number"
    elif kind is str:
        ok, expected = isinstance(value, str), "a string"
    elif kind is tuple:
        ok = isinstance(value, list) and len(value) == len(default) and all(map(number, value))
        expected = f"a list of {len(default)} numbers"
    else:
        return
    if not ok:
        shown = f"{type(value).__name__} {value!r}" if value is not None else "nothing (null)"
        raise ConfigError(f"{path}: expected {expected}, got {shown}")


#: Annotations that :func:`check_keywords` checks, also as the strings of postponed annotations.
_PLAIN_TYPES = {"bool": bool, "int": int, "float": float, "str": str}


_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def _raised(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
