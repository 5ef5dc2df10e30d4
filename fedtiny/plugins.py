"""Plugins from outside the package: data sets and backbones named by a Hydra-style ``_target_``.

    # my_conf/dataset/sensors.yaml                # fedtiny --config-dir my_conf dataset=sensors
    _target_: mypkg.tasks.build                   # any importable callable returning a FederatedTask
    num_clients: 8                                # fedtiny's: how many devices the task returns
    path: data/sensors.csv                        # the callable's own keyword arguments
    window: 64

A plugin needs no edit of fedtiny: its config is checked against the callable's signature
before anything starts (every parameter without a default given, no key it does not take,
values of the annotated types), and every process that needs the callable (simulation
workers, Ray's workers, Flower's apps) imports it by its dotted path. The module must be
importable there: installed (``pip install -e mypkg``), on ``PYTHONPATH``, or (for a run's
worker processes and Ray's workers, which search the directory the run started in) a module
in that directory.

Layer 1 (with errors): imports only errors.
"""

from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fedtiny.errors import ConfigError

TARGET = "_target_"
DATASET_KEYS = ("name", "num_clients")  # fedtiny's keys of a plugin data set: passed only if its loader takes them


def resolve(path: Any, where: str) -> Callable:
    """The callable a dotted path names (``pkg.module.function``); ConfigError saying why not."""
    if not isinstance(path, str) or "." not in path.strip("."):
        raise ConfigError(f"{where}: a _target_ is a dotted path to a callable (mypkg.tasks.build), got {path!r}")
    module_name, _, attr = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"{where}: cannot import {module_name!r} for {path!r}: {err} (install the plugin package, "
                          "e.g. pip install -e ., or put its directory on PYTHONPATH)") from None
    except Exception as err:  # noqa: BLE001 - the plugin's own import failed: say so, with its reason
        raise ConfigError(f"{where}: importing {module_name!r} failed: {type(err).__name__}: {err}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"{where}: {module_name!r} has no callable {attr!r}")
    return fn


def check_arguments(fn: Callable, given: Mapping[str, Any], where: str, supplied: Sequence[str] = ()) -> None:
    """Check a plugin's config keys against ``fn``'s signature: every parameter without a
    default is given (or in ``supplied``, the ones fedtiny passes itself), no key is unknown
    (unless ``fn`` takes ``**kwargs``), and each value has its parameter's annotated type."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return  # a builtin or C callable: nothing to check against
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve is not checked
        hints = {}
    named = {n: p for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    unknown = sorted(set(given) - set(named)) if not takes_any else []
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} for {_name(fn)} (it takes: "
                          f"{', '.join(sorted(set(named) - set(supplied))) or 'nothing'}){nearest(unknown[0], named)}")
    missing = [n for n, p in named.items() if p.default is p.empty and n not in given and n not in supplied]
    if missing:
        raise ConfigError(f"{where}: {_name(fn)} needs {', '.join(missing)} (no default), add it to the config")
    for key, value in given.items():
        if key in hints and not _has_type(value, hints[key]):
            raise ConfigError(f"{where}.{key}: {_name(fn)} takes {_type_name(hints[key])}, got {value!r}")


def call(fn: Callable, given: Mapping[str, Any], supplied: Mapping[str, Any]) -> Any:
    """``fn(**given, **supplied)``, passing each supplied argument only if ``fn`` takes it."""
    try:
        params = inspect.signature(fn).parameters
        takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):
        params, takes_any = {}, True
    extra = {k: v for k, v in supplied.items() if takes_any or k in params}
    return fn(**dict(given), **extra)


def plain(value: Any) -> Any:
    """An OmegaConf node as plain Python (dicts, lists), anything else unchanged."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _name(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def nearest(word: str, choices) -> str:
    """'; did you mean X?' for the closest of `choices` to `word`, or nothing."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _has_type(value: Any, hint: Any) -> bool:
    value = plain(value)
    if hint is Any or value is None and _optional(hint):
        return True
    origin = typing.get_origin(hint)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        return any(_has_type(value, h) for h in typing.get_args(hint))
    base = origin or hint
    if base is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if base in (list, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        args = typing.get_args(hint)
        if base is tuple and args and Ellipsis not in args:  # tuple[int, int, int]: one type per item
            return len(value) == len(args) and all(_has_type(v, a) for v, a in zip(value, args))
        return not args or all(_has_type(v, args[0]) for v in value)
    if base in (dict, Mapping):
        return isinstance(value, dict)
    if isinstance(base, type):
        return isinstance(value, base)
    return True  # a hint this check does not model (Literal, a Protocol, ...): not checked


def _optional(hint: Any) -> bool:
    return type(None) in typing.get_args(hint)


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "") if typing.get_args(hint) else getattr(hint, "__name__", str(hint))
