"""Turning functions, arguments, results and exceptions into frames and back.

Functions go with cloudpickle, so lambdas, closures and functions from ``__main__`` travel by
value; each body is named by its content hash, so it crosses the wire once and is referred to by
hash afterwards. Everything else goes with pickle protocol 5 through the same cloudpickle pickler
(so instances of classes defined in ``__main__`` work too): the first frame is the in-band pickle,
large buffers (NumPy arrays, bytearrays, big bytes, memoryviews) follow as out-of-band frames that
pyzmq sends without copying.

Only clients and workers call the ``loads*`` functions here; the router never imports this module.
"""

from __future__ import annotations

import collections
import functools
import io
import linecache
import os
import pickle
import re
import site
import sys
import sysconfig
import traceback
import types
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cloudpickle

from squall import errors, protocol
from squall.errors import RemoteTraceback, SerializationError, TaskFailed
from squall.protocol import Frame, function_hash

#: Buffers at least this large travel as frames of their own instead of inside the pickle.
OOB_THRESHOLD = 64 * 1024


class _OutOfBand:
    """Stands in for a big bytes/bytearray so that protocol 5 can send it out of band.

    The C pickler writes bytes and bytearray in band without asking any hook; a stand-in whose
    reduction is a PickleBuffer reaches ``buffer_callback``.
    """

    __slots__ = ("buf", "rebuild")

    def __init__(self, buf: Any, rebuild: Callable[[Any], Any]) -> None:
        self.buf = buf
        self.rebuild = rebuild

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return self.rebuild, (pickle.PickleBuffer(self.buf),)


_REBUILD: dict[type, Callable[[Any], Any]] = {bytes: bytes, bytearray: bytearray}


def _rebuild_memoryview(buf: Any, fmt: str, shape: tuple[int, ...]) -> memoryview:
    view = memoryview(buf).cast("B")
    return view if fmt == "B" and len(shape) == 1 else view.cast(fmt, shape)  # type: ignore[call-overload]


def _reduce_memoryview(view: memoryview) -> tuple[Any, ...]:
    """A memoryview travels as a buffer (out of band when big) and comes back as a memoryview
    of the same format and shape; a non-contiguous one is copied into order first."""
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
        return _rebuild_memoryview, (pickle.PickleBuffer(view), view.format, (view.nbytes,))
    return _rebuild_memoryview, (pickle.PickleBuffer(view), view.format, view.shape)


def _reduce_code(code: types.CodeType) -> tuple[Any, ...]:
    """cloudpickle's reduction of a code object, keeping the file name it throws away.

    cloudpickle writes ``"<dynamic-code>"`` for the file of every function it sends by value
    (to make payloads independent of where they were defined), which leaves remote tracebacks
    without a file to show. Keeping the real name lets a traceback point at the user's file.
    """
    rebuild, args = cloudpickle.cloudpickle._code_reduce(code)
    return _code_in_file, (rebuild, args, code.co_filename)


def _code_in_file(rebuild: Callable[..., types.CodeType], args: Any, filename: str) -> Any:
    return rebuild(*args).replace(co_filename=filename)


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle's pickler, with memoryviews kept as memoryviews (cloudpickle makes bytes)
    and code objects keeping their file names."""

    dispatch_table = collections.ChainMap(
        {memoryview: _reduce_memoryview, types.CodeType: _reduce_code},
        cloudpickle.Pickler.dispatch_table,
    )


def _with_buffers_out_of_band(obj: Any, seen: dict[int, Any], depth: int = 0) -> Any:
    """Copy of the containers in ``obj`` with big buffers replaced by :class:`_OutOfBand`.

    Walks lists, tuples and dicts only (a few levels deep); other objects are left to pickle.
    """
    kind = type(obj)
    if kind in _REBUILD:
        if len(obj) >= OOB_THRESHOLD:
            if id(obj) not in seen:
                seen[id(obj)] = _OutOfBand(obj, _REBUILD[kind])
            return seen[id(obj)]
        return obj
    if depth > 8:
        return obj
    if kind is tuple or kind is list:
        return kind(_with_buffers_out_of_band(x, seen, depth + 1) for x in obj)
    if kind is dict:
        return {k: _with_buffers_out_of_band(v, seen, depth + 1) for k, v in obj.items()}
    return obj


def _dump(obj: Any) -> list[Frame]:
    buffers: list[Any] = []

    def keep_large_out_of_band(buf: pickle.PickleBuffer) -> bool:
        raw = buf.raw()
        if raw.nbytes < OOB_THRESHOLD:
            return True  # in band: a frame of its own would cost more than the copy
        buffers.append(raw)
        return False

    stream = io.BytesIO()
    _Pickler(stream, protocol=5, buffer_callback=keep_large_out_of_band).dump(obj)
    return [stream.getvalue(), *buffers]


#: types that pickle the same with and without cloudpickle (it never sees them)
_ATOMIC = frozenset({int, float, str, bytes, bool, type(None), complex})
#: containers looked into, up to this many items, for :func:`_plain`
_PLAIN_ITEMS = 32


def _plain(obj: Any, depth: int = 0) -> bool:
    """Whether ``obj`` is atomic values only, or small tuples, lists and dicts of them (two
    levels deep): the standard library's pickler makes the same bytes as cloudpickle's for
    them, several times faster (no Pickler object to build for each value). Loops, not
    generators: this runs for every task's arguments and result."""
    kind = type(obj)
    if kind in _ATOMIC:
        return True
    if depth >= 2:
        return False
    if kind is tuple or kind is list:
        if len(obj) > _PLAIN_ITEMS:
            return False
        for item in obj:
            if type(item) not in _ATOMIC and not _plain(item, depth + 1):
                return False
        return True
    if kind is dict:
        if len(obj) > _PLAIN_ITEMS:
            return False
        for key, value in obj.items():
            if type(key) is not str or (
                type(value) not in _ATOMIC and not _plain(value, depth + 1)
            ):
                return False
        return True
    return False


def dumps(obj: Any) -> list[Frame]:
    """Pickle ``obj`` into frames: the pickle, then one frame per large buffer.

    The common case (small values) is pickled once; plain small values (:func:`_plain`) by
    the standard library's pickler. Only a big pickle pays for a second pass that moves big
    bytes and bytearrays out of band.

    Raises:
        Exception: whatever pickling raised; callers turn it into a SerializationError that
            names the value.
    """
    if _plain(obj):
        data = pickle.dumps(obj, protocol=5)
        if len(data) < OOB_THRESHOLD:
            return [data]
    error: Exception | None = None
    try:
        frames = _dump(obj)
        if len(frames[0]) < OOB_THRESHOLD:
            return frames
    except Exception as exc:
        error = exc
    seen: dict[int, Any] = {}
    prepared = _with_buffers_out_of_band(obj, seen)
    if not seen:
        if error is not None:
            raise error
        return frames
    return _dump(prepared)


def loads(frames: Sequence[Any]) -> Any:
    """Unpickle what :func:`dumps` made; ``frames`` may be bytes or ``zmq.Frame`` objects."""
    return pickle.loads(_buffer(frames[0]), buffers=[_buffer(f) for f in frames[1:]])


def _buffer(frame: Any) -> Any:
    # zmq.Frame exposes its memory as a writable memoryview: no copy, and NumPy arrays built on it
    # are writable, as the caller's original was.
    return getattr(frame, "buffer", frame)


class DependencyRef:
    """Stands in, inside a task's arguments, for the value of another task's future.

    The client puts one where a ``squall.Future`` was passed; the worker swaps in the value the
    router attached to the task, so the value never travels back through the client.
    """

    __slots__ = ("index", "task_id")

    def __init__(self, index: int, task_id: int) -> None:
        self.index = index
        self.task_id = task_id

    def __reduce__(self) -> tuple[Any, ...]:
        return DependencyRef, (self.index, self.task_id)


def dumps_call(args: Sequence[Any], kwargs: Mapping[str, Any], options: Any = None) -> list[Frame]:
    """Pickle a call's arguments (and the task's options); on failure, name the argument that
    would not pickle.

    Raises:
        SerializationError: naming the argument (its position or keyword) and its type.
    """
    try:
        return dumps((tuple(args), dict(kwargs), options))
    except Exception as exc:
        raise _name_culprit(args, kwargs, exc) from exc


def _name_culprit(
    args: Sequence[Any], kwargs: Mapping[str, Any], exc: Exception
) -> SerializationError:
    candidates = [(f"argument {i}", v) for i, v in enumerate(args)]
    candidates += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for name, value in candidates:
        try:
            dumps(value)
        except Exception as inner:
            return SerializationError(
                f"{name} of type {type(value).__qualname__} cannot be pickled: {inner}"
            )
    return SerializationError(f"the arguments cannot be pickled: {exc}")


# ---------------------------------------------------------------------------------------------
# Functions


def _installed_roots() -> tuple[str, ...]:
    paths = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths.update(site.getsitepackages())
    paths.add(site.getusersitepackages())
    return tuple(os.path.realpath(p) + os.sep for p in paths)


_INSTALLED = _installed_roots()
_BY_VALUE: set[str] = set()


def _ship_module_by_value(fn: Any) -> None:
    """Send the function's own module by value when workers are unlikely to be able to import it.

    A module outside the interpreter's install locations (a test file, a script's sibling
    module) would fail to import on a worker on another machine, so cloudpickle is asked to
    send its code along. Installed packages, and squall itself, still go by reference.
    """
    name = getattr(fn, "__module__", None)
    if not name or name in _BY_VALUE or name == "__main__" or name.split(".")[0] == "squall":
        return
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None)
    if module is None or path is None:
        return
    if not os.path.realpath(path).startswith(_INSTALLED):
        cloudpickle.register_pickle_by_value(module)
    _BY_VALUE.add(name)


_pickled_functions: weakref.WeakKeyDictionary[Any, tuple[bytes, bytes]] = (
    weakref.WeakKeyDictionary()
)


def dumps_function(fn: Callable[..., Any]) -> tuple[bytes, bytes]:
    """Return ``(hash, body)`` for ``fn``, pickling each function object once.

    Like Dask and Ray, squall pickles a function the first time it is submitted and reuses
    that body while the function object lives: later changes to the globals or closure cells
    it captured are not seen. (Pickling a closure costs tens of microseconds; reusing the body
    is what lets a loop of ``submit`` calls run at tens of thousands per second.)

    Raises:
        SerializationError: the function (or something it closes over) cannot be pickled.
    """
    try:
        return _pickled_functions[fn]
    except (KeyError, TypeError):  # TypeError: not weak-referenceable (builtins)
        pass
    pickled = _dumps_function(fn)
    try:
        _pickled_functions[fn] = pickled
    except TypeError:
        pass
    return pickled


#: function body hash -> the function's qualified name, for the router to show (FN_BODY)
_labels: collections.OrderedDict[bytes, str] = collections.OrderedDict()
_LABELS_KEPT = 4096


def function_label(fn_hash: bytes) -> str:
    """The qualified name (``module.qualname``) of a function this process pickled, by its
    body's hash; "" if unknown. Sent beside the body, so the router can name every task of
    it without looking into the pickle."""
    return _labels.get(fn_hash, "")


def label_of(fn: Any) -> str:
    target = getattr(fn, "func", fn)  # functools.partial: the function it wraps
    qualname = getattr(target, "__qualname__", None) or type(target).__qualname__
    module = getattr(target, "__module__", None)
    return f"{module}.{qualname}" if module else str(qualname)


def _dumps_function(fn: Callable[..., Any]) -> tuple[bytes, bytes]:
    if not callable(fn):
        raise TypeError(f"{fn!r} is not callable")
    pickled = _dumps_callable(fn)
    _labels[pickled[0]] = label_of(fn)[:255]
    if len(_labels) > _LABELS_KEPT:
        _labels.popitem(last=False)
    return pickled


def _dumps_callable(fn: Callable[..., Any]) -> tuple[bytes, bytes]:
    target = getattr(fn, "__func__", fn)  # bound methods: the function's module matters
    _ship_module_by_value(getattr(target, "func", target))  # functools.partial
    try:
        stream = io.BytesIO()
        _Pickler(stream, protocol=5).dump(fn)
        body = stream.getvalue()
    except Exception as exc:
        raise SerializationError(
            f"function {getattr(fn, '__qualname__', fn)!r} cannot be pickled: {exc}"
        ) from exc
    return function_hash(body), body


def loads_function(body: Any) -> Callable[..., Any]:
    fn = pickle.loads(_buffer(body))
    if not callable(fn):
        raise SerializationError(f"function body unpickled to a {type(fn).__name__}")
    return fn  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------
# Exceptions


def dumps_exception(exc: BaseException, function: str = "", *, pickled: bool = True) -> list[Frame]:
    """Frames for a task's exception: a JSON summary, then the pickled exception if it pickles
    (an empty frame instead without ``pickled``: a JSON call's caller reads no pickle).

    The summary (type, message, traceback text, the task's ``function`` name) lets the caller
    raise ``TaskFailed`` when the exception itself cannot cross, and the router log the
    failure without unpickling anything.
    """
    try:
        message = str(exc)
        tb = format_traceback(exc)
    except Exception as broken:  # an exception whose __str__ raises still gets an outcome
        message = f"<unprintable {type(exc).__name__}: {type(broken).__name__}>"
        tb = ""
    frames: list[Frame] = [b""]
    if pickled:
        try:
            frames = dumps(exc)
            pickle.loads(frames[0], buffers=frames[1:])  # some exceptions pickle, never load
        except Exception:
            frames = [b""]
    code = errors.failure_code_of(exc)
    return protocol.error_outcome(_qualified_name(type(exc)), message, tb, frames, function, code)


def loads_exception(frames: Sequence[Any]) -> BaseException:
    """Rebuild a remote exception, with the remote traceback chained as its ``__cause__``.

    Errors the router made itself (no pickle) come back as the class their code maps to.
    """
    summary = protocol.read_error_summary(frames[0])
    exc: BaseException | None = None
    if len(frames) > 1 and len(_buffer(frames[1])) > 0:
        try:
            exc = loads(frames[1:])
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        if summary.code is protocol.FailureCode.RAISED:
            exc = TaskFailed(summary.type, summary.message, summary.traceback)
        else:
            exc = errors.failure_class(summary.code)(summary.message)
    if summary.traceback:
        tb = with_source_lines(summary.traceback)
        if exc.__cause__ is None:  # an exception that carries its own cause keeps it
            exc.__cause__ = RemoteTraceback(tb)
        try:
            exc.remote_traceback = tb  # type: ignore[attr-defined]
        except AttributeError:  # exceptions with __slots__
            pass
    return exc


_SQUALL_ROOT = os.path.realpath(os.path.dirname(__file__)) + os.sep


@functools.lru_cache(maxsize=1024)
def _in_squall(filename: str) -> bool:
    return os.path.realpath(filename).startswith(_SQUALL_ROOT)


def format_traceback(exc: BaseException) -> str:
    """The traceback text of a task's exception, without squall's own frames.

    The worker's frames that call the task (the executor, the call helpers) say nothing about
    the user's code and come first in every traceback, so they are dropped, in the exception
    and in its causes and contexts. A stack made only of squall's frames (a failure in squall
    itself) is kept whole: those frames are then the only clue.
    """
    report = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    pending, seen = [report], set[int]()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        user = [f for f in current.stack if not _in_squall(f.filename)]
        if user:
            current.stack = traceback.StackSummary.from_list(user)
        pending += [e for e in (current.__cause__, current.__context__) if e is not None]
        pending += getattr(current, "exceptions", None) or []
    return "".join(report.format())


_FRAME_LINE = re.compile(r'(?P<lead>[ |]*)File "(?P<file>[^"]+)", line (?P<line>\d+), in ')


def with_source_lines(tb: str) -> str:
    """Fill in the source lines a remote traceback lacks, from the files this process has.

    The worker formats the traceback, so a frame whose file the worker does not have (a
    function sent by value from the client's machine) comes without its line; the client
    usually has that file, and shows the line as a local traceback would.
    """
    lines = tb.splitlines(keepends=True)
    out: list[str] = []
    for i, text in enumerate(lines):
        out.append(text)
        match = _FRAME_LINE.match(text)
        if match is None:
            continue
        indent = match["lead"] + "  "
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if following.startswith(indent) and not following[len(indent) :].startswith("File "):
            continue  # the worker had the line
        source = linecache.getline(match["file"], int(match["line"])).strip()
        if source:
            out.append(f"{indent}{source}\n")
    return "".join(out)


def type_name(kind: type) -> str:
    """An exception type's name as error summaries give it: ``ValueError``, ``app.Bad``."""
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


_qualified_name = type_name


def describe(fn: Any) -> str:
    """A short name for a callable, for logs and errors."""
    if isinstance(fn, types.FunctionType | types.MethodType | types.BuiltinFunctionType):
        return str(fn.__qualname__)
    return repr(fn)[:80]
