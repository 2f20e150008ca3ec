"""Functions known by name: deployed with the workers, called from anywhere by that name.

A module marks its functions with :func:`function`::

    @squall.function("images.resize")
    def resize(path: str, width: int) -> str: ...

and ``squall worker --import myapp.tasks`` serves them: each worker process imports the
modules, tells the router the names it serves, and runs a call by name (``ex.submit(
"images.resize", ...)``, the HTTP API, a client in another language) with the function it
imported. Nothing is pickled to name a function, so callers need not have its code.

Calls from Python may pickle their arguments as any task does; calls from elsewhere carry JSON
(:class:`squall.protocol.Kind`), which :func:`json_call` and :func:`json_value` decode and
encode on the worker.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from squall import serialization
from squall.errors import ConfigError, SerializationError, UnknownFunction
from squall.options import TaskOptions
from squall.protocol import (
    DEFAULT_ROUTE,
    MAX_FUNCTION_NAME,
    Route,
    name_hash,
    valid_function_name,
)

F = TypeVar("F", bound=Callable[..., Any])

#: name -> function, filled by :func:`function` as modules are imported
_registry: dict[str, Callable[..., Any]] = {}


def function(name: str) -> Callable[[F], F]:
    """Register the decorated function under ``name`` for calls by name.

    The function itself is returned unchanged: it can still be called, or submitted, as a
    plain function.

    Raises:
        ValueError: ``name`` is not 1 to 200 letters, digits and ``_ - . :``, or another
            function of this process has it already.
    """
    check_name(name)

    def register(fn: F) -> F:
        known = _registry.get(name)
        if known is not None and known is not fn and _origin(known) != _origin(fn):
            raise ValueError(f"function name {name!r} is taken by {_origin(known)}")
        _registry[name] = fn
        return fn

    return register


def check_name(name: str) -> str:
    """``name`` if it can name a function.

    Raises:
        ValueError: it cannot, with what a name may hold.
    """
    if not isinstance(name, str) or not valid_function_name(name):
        raise ValueError(
            f"a function name has 1 to {MAX_FUNCTION_NAME} letters, digits and _ - . :, "
            f"not {name!r}"
        )
    return name


def target(fn: Callable[..., Any] | str) -> tuple[bytes, bytes, str]:
    """What a task calls, as the client sends it: ``(hash, body, name)``; a function's
    hash and cloudpickled body, or for a name (a call by name) its hash, no body, and the
    name, which goes in the task's route (:func:`named_route`).

    Raises:
        ValueError: a bad function name.
        SerializationError: the function cannot be pickled.
    """
    if isinstance(fn, str):
        return name_hash(check_name(fn)), b"", fn
    fn_hash, body = serialization.dumps_function(fn)
    return fn_hash, body, ""


def local(fn: Callable[..., Any] | str) -> Callable[..., Any]:
    """The function a call in this process runs (inline mode): ``fn``, or the one registered
    under the name ``fn`` here.

    Raises:
        UnknownFunction: no function of this process has that name.
    """
    if not isinstance(fn, str):
        return fn
    found = _registry.get(check_name(fn))
    if found is None:
        raise UnknownFunction(
            f"no function named {fn!r} in this process: inline mode calls by name only what "
            "an imported module marks @squall.function(name)"
        )
    return found


def named_route(route: Route | None, name: str) -> Route | None:
    """``route`` naming the function ``name`` calls (unchanged for a call of a body)."""
    if not name:
        return route
    return (route or DEFAULT_ROUTE)._replace(function=name)


def _origin(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', '?')}"


def registered() -> dict[str, Callable[..., Any]]:
    """Every function registered in this process so far, by name."""
    return dict(_registry)


def import_modules(modules: Iterable[str]) -> dict[str, Callable[..., Any]]:
    """Import ``modules`` (``squall worker --import``) and return the functions they register.

    Raises:
        ConfigError: a module cannot be imported (its own error, in one line), or the modules
            register no function at all.
    """
    modules = list(modules)
    if modules and "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as ``python -m`` does: the project's own modules
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise ConfigError(
                f"--import {module}: {type(exc).__name__}: {exc}".splitlines()[0]
            ) from None
    found = registered()
    if modules and not found:
        raise ConfigError(
            f"--import {', '.join(modules)}: no function is marked @squall.function(name)"
        )
    return found


def json_call(frames: list[Any]) -> tuple[list[Any], dict[str, Any], TaskOptions | None]:
    """The arguments of a JSON call, and how it runs: its one frame, ``{"args": [...],
    "kwargs": {...}, "options": {"timeout": s, "retries": n, "backoff": s, "traceparent":
    "00-..."}}``.

    Raises:
        SerializationError: the frame is not such an object.
        TypeError, ValueError: a bad option (as ``TaskOptions`` says).
    """
    try:
        call = json.loads(bytes(frames[0])) if len(frames) == 1 else None
    except (ValueError, RecursionError) as exc:
        raise SerializationError(f"the call's JSON cannot be read: {exc}") from None
    if not isinstance(call, dict):
        raise SerializationError('a JSON call is one object: {"args": [...], "kwargs": {...}}')
    args, kwargs = call.get("args", []), call.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise SerializationError('a JSON call\'s "args" is a list and its "kwargs" an object')
    options = call.get("options") or {}
    if not isinstance(options, dict) or not set(options) <= set(WORKER_OPTIONS):
        raise SerializationError(f"a JSON call's options are some of {', '.join(WORKER_OPTIONS)}")
    return args, kwargs, TaskOptions(**options) if options else None


#: the options a JSON call carries to its worker (the others are the router's: its route)
WORKER_OPTIONS = ("timeout", "retries", "backoff", "traceparent")


def encode_json_call(
    args: Iterable[Any], kwargs: dict[str, Any], options: dict[str, Any] | None = None
) -> bytes:
    """The frame of a JSON call (see :func:`json_call`).

    Raises:
        SerializationError: an argument JSON cannot encode, naming its type.
    """
    call: dict[str, Any] = {"args": list(args), "kwargs": kwargs}
    if options:
        call["options"] = options
    return json_value(call, "argument")


def loads_json(frames: list[Any]) -> Any:
    """A JSON outcome's value (a result, a streamed value): its one frame, decoded."""
    if len(frames) != 1:
        raise SerializationError(f"a JSON value is one frame, not {len(frames)}")
    raw = frames[0]
    return json.loads(bytes(raw.buffer if hasattr(raw, "buffer") else raw))


def json_value(value: Any, what: str = "result") -> bytes:
    """``value`` as one JSON frame (a result, a yielded value).

    Raises:
        SerializationError: JSON cannot encode it, naming the type that it cannot.
    """
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":")).encode()
    except TypeError as exc:  # "Object of type X is not JSON serializable"
        raise SerializationError(f"the {what} is not JSON: {exc}") from None
    except (ValueError, RecursionError) as exc:  # NaN, infinity, circular
        raise SerializationError(f"the {what} is not JSON: {exc}") from None
