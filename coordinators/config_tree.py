"""The raw configuration: a milvus.yaml read safely, merged over the defaults and overridden by the
environment (Milvus's matching rule), with the origin of every value, and typed reads that name the
key, the value and its origin in every error."""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import yaml

from coordinators.config_types import DEFAULTS, ConfigError, KeyPath
from coordinators.registry import ROLE_SPECS

__all__ = ["SECRET_KEYS", "Origin", "Reader", "Tree", "dotted", "leaves", "normalize", "read_yaml"]

ROLE_SECTIONS: Mapping[str, str] = MappingProxyType({name: s.section for name, s in ROLE_SPECS.items()})
_BOOLEANS: Mapping[str, bool] = MappingProxyType(
    {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}
)
_INTEGER = re.compile(r"[+-]?[0-9]+")  # ASCII digits: int() would also read "٣"
# Keys whose values never appear in a message (ConfigError text ends up on terminals and in logs).
SECRET_KEYS: frozenset[KeyPath] = frozenset({("etcd", "auth", "password")})


def read_yaml(path: Path) -> Mapping[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse config file {path}: {_yaml_problem(exc)}") from exc
    except RecursionError:
        raise ConfigError(f"cannot parse config file {path}: nested too deeply") from None
    except ValueError as exc:  # a value PyYAML's constructors reject late, e.g. the date 2001-02-30
        raise ConfigError(f"cannot parse config file {path}: {exc}") from None
    _check_shape(data, path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, got a {type(data).__name__}")
    return data


_MAX_VALUES = 100_000  # far more than any real milvus.yaml; bounds an alias "bomb"


def _check_shape(data: Any, path: Path) -> None:
    """Refuse what merging could not finish: an alias (``*name``) inside the node it names, or aliases
    multiplying into more values than any real config holds."""
    stack: list[tuple[Any, frozenset[int]]] = [(data, frozenset())]
    seen = 0
    while stack:
        node, ancestors = stack.pop()
        seen += 1
        if seen > _MAX_VALUES:
            raise ConfigError(f"config file {path}: more than {_MAX_VALUES} values (aliases expanding?)")
        if not isinstance(node, (dict, list)):
            continue
        if id(node) in ancestors:
            raise ConfigError(f"config file {path}: an alias (*name) refers to a mapping or list that contains it")
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, ancestors | {id(node)}) for child in children)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Line and column first: that is what the operator needs to find the mistake."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
    return str(exc).replace("\n", " ")


def normalize(name: str) -> str:
    """Milvus's matching rule for environment variables against key paths."""
    return re.sub(r"[_./]", "", name).lower()


def dotted(path: KeyPath) -> str:
    return ".".join(path)


def leaves(tree: Mapping[Any, Any], prefix: KeyPath = ()) -> Iterator[tuple[KeyPath, Any]]:
    for key, value in tree.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping):
            yield from leaves(value, path)
        else:
            yield path, value


@dataclass(frozen=True)
class Origin:
    """Where a value came from, so an error message can send the operator to the right place."""

    kind: Literal["default", "file", "env"]
    where: str = ""

    def __str__(self) -> str:
        if self.kind == "default":
            return "from built-in defaults"
        return f"from {'file' if self.kind == 'file' else 'environment'} {self.where}"


DEFAULT_ORIGIN = Origin("default")


@dataclass
class Tree:
    """The raw merged key tree plus the origin of every leaf; unknown keys are kept, never read."""

    values: dict[str, Any]
    origins: dict[KeyPath, Origin]
    #: The sections this suite reads (a scalar there is an error); other mappings are kept, never read.
    sections: frozenset[KeyPath] = frozenset()

    @classmethod
    def from_defaults(cls) -> Tree:
        """Defaults plus the seed's ``<role>.activeStandby.enabled``, so file and env can set either spelling."""
        values = copy.deepcopy(dict(DEFAULTS))
        for section in ROLE_SECTIONS.values():
            values[section]["activeStandby"] = {"enabled": False}
        return cls(values, {path: DEFAULT_ORIGIN for path, _ in leaves(values)}, frozenset(sections(values)))

    def merge(self, data: Mapping[Any, Any], origin: Origin, prefix: KeyPath = ()) -> None:
        """Deep-merge a file's mapping; a scalar where a section belongs is an error."""
        node = self._node(prefix)
        for key, value in data.items():
            path = (*prefix, str(key))
            if isinstance(node.get(str(key)), dict) and (path in self.sections or isinstance(value, Mapping)):
                if value is None:  # a section whose keys are all commented out
                    continue
                if not isinstance(value, Mapping):
                    raise ConfigError(f"must be a mapping, got {value!r} ({origin})", dotted(path))
                self.merge(value, origin, path)
                continue
            node[str(key)] = value
            self.origins[path] = origin
            self.origins.update({leaf: origin for leaf, _ in leaves({str(key): value}, prefix)})

    def apply_env(self, env: Mapping[str, str]) -> None:
        """Override every leaf some variable matches; variables matching nothing are ignored."""
        targets = {normalize(dotted(path)): path for path, _ in leaves(self.values)}
        for name in sorted(env):
            path = targets.get(normalize(name))
            if path is not None:
                self._node(path[:-1])[path[-1]] = env[name]
                self.origins[path] = Origin("env", name)

    def get(self, path: KeyPath) -> tuple[Any, Origin]:
        return self._node(path[:-1]).get(path[-1]), self.origins.get(path, DEFAULT_ORIGIN)

    def _node(self, path: KeyPath) -> dict[str, Any]:
        node = self.values
        for key in path:
            node = node[key]
        return node


def sections(tree: Mapping[str, Any], prefix: KeyPath = ()) -> Iterator[KeyPath]:
    """The path of every mapping in ``tree``."""
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield (*prefix, key)
            yield from sections(value, (*prefix, key))


class Reader:
    """Typed reads of known keys; each failure names the key, the value and its origin."""

    def __init__(self, tree: Tree) -> None:
        self._tree = tree

    def error(self, path: KeyPath, requirement: str) -> ConfigError:
        value, origin = self._tree.get(path)
        shown = "<redacted>" if path in SECRET_KEYS else repr(value)  # never print a password
        if len(shown) > 200:
            shown = shown[:200] + "..."
        return ConfigError(f"{requirement}, got {shown} ({origin})", dotted(path))

    def origin(self, path: KeyPath) -> Origin:
        return self._tree.get(path)[1]

    def boolean(self, *path: str) -> bool:
        value, _ = self._tree.get(path)
        if isinstance(value, bool):
            return value
        if isinstance(value, (str, int)) and str(value).strip().lower() in _BOOLEANS:
            return _BOOLEANS[str(value).strip().lower()]
        raise self.error(path, "must be a boolean (true/false)")

    def integer(self, *path: str, low: int, high: int | None = None) -> int:
        value, _ = self._tree.get(path)
        requirement = f"must be an integer >= {low}" if high is None else f"must be an integer in {low}..{high}"
        if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
            try:
                value = int(value)
            except ValueError:  # more digits than Python converts (4300): no valid port or count anyway
                raise self.error(path, requirement) from None
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            raise self.error(path, requirement)
        return value

    def positive(self, *path: str) -> float:
        value, _ = self._tree.get(path)
        number = to_float(value)
        if number is None or number <= 0:
            raise self.error(path, "must be a number > 0")
        return number

    def text(self, *path: str) -> str:
        value, _ = self._tree.get(path)
        if value is None:
            return ""
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.error(path, "must be a string")
        return str(value)

    def choice(self, *path: str, choices: tuple[str, ...]) -> str:
        value = self.text(*path).strip().lower()
        if value not in choices:
            raise self.error(path, f"must be one of {', '.join(choices)}")
        return value

    def strings(self, *path: str) -> tuple[str, ...]:
        value, _ = self._tree.get(path)
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise self.error(path, "must be a list of strings or a comma-separated string")
        result = tuple(item.strip() for item in items if item.strip())
        if not result:
            raise self.error(path, "must not be empty")
        return result


def to_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None
