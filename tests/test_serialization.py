"""Pure tests of serialization: values, buffers out of band, functions by hash, exceptions."""

from __future__ import annotations

import array
import pickle
import threading
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import squall
from squall import serialization
from squall.serialization import (
    OOB_THRESHOLD,
    dumps,
    dumps_call,
    dumps_exception,
    dumps_function,
    function_hash,
    loads,
    loads_exception,
    loads_function,
)


@dataclass
class Point:
    x: int
    y: int

    def norm1(self) -> int:
        return abs(self.x) + abs(self.y)


class Unpicklable:
    """Refuses to pickle, like a socket or a lock, but with a recognisable type name."""

    def __reduce__(self) -> Any:
        raise TypeError("Unpicklable objects stay home")


class TwoArgError(Exception):
    """Pickles (as ``TwoArgError(message)``) but cannot unpickle: __init__ wants two args."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"code {code}: {detail}")
        self.code = code


def make_adder(n: int) -> Any:
    def add(x: int) -> int:
        return x + n

    return add


def raise_value_error() -> None:
    raise ValueError("boom: bad value 42")


def raise_two_arg_error() -> None:
    raise TwoArgError(7, "disk on fire")


def caught(fn: Any) -> BaseException:
    try:
        fn()
    except BaseException as exc:  # the test wants whatever was raised
        return exc
    raise AssertionError("did not raise")


# ---------------------------------------------------------------------------------------------
# Values


@pytest.mark.parametrize(
    "value",
    [
        None,
        0,
        -7,
        2**100,
        1.5,
        "text ✓",
        b"small bytes",
        (1, "a"),
        [1, [2, [3]]],
        {"k": {"nested": (1, 2)}},
        {1, 2, 3},
        frozenset({"x"}),
    ],
)
def test_small_values_roundtrip_in_one_frame(value: Any) -> None:
    frames = dumps(value)
    assert len(frames) == 1
    back = loads(frames)
    assert back == value
    assert type(back) is type(value)


def test_lambda_as_argument_roundtrips() -> None:
    frames = dumps((lambda x: x * 3, 5))
    fn, arg = loads(frames)
    assert fn(arg) == 15


def test_instance_of_test_module_class_roundtrips() -> None:
    back = loads(dumps(Point(3, -4)))
    assert back == Point(3, -4)
    assert isinstance(back, Point)
    assert back.norm1() == 7


def test_instance_roundtrips_after_its_module_was_shipped_by_value() -> None:
    # dumps_function registers this (uninstalled) module for pickling by value; instances of its
    # classes must still come back as the same class in this process.
    dumps_function(make_adder(1))
    back = loads(dumps(Point(1, 2)))
    assert type(back) is Point
    assert back == Point(1, 2)


def test_small_bytes_stay_in_band() -> None:
    value = b"x" * (OOB_THRESHOLD - 1)
    frames = dumps(value)
    assert len(frames) == 1
    assert loads(frames) == value


def test_big_bytes_go_out_of_band() -> None:
    value = bytes(range(256)) * (OOB_THRESHOLD // 256 + 1)
    assert len(value) >= OOB_THRESHOLD
    frames = dumps(value)
    assert len(frames) == 2
    assert len(frames[0]) < 1024  # the pickle itself does not hold the data
    assert bytes(frames[1]) == value
    back = loads(frames)
    assert type(back) is bytes
    assert back == value


def test_bytes_exactly_at_threshold_go_out_of_band() -> None:
    frames = dumps(b"t" * OOB_THRESHOLD)
    assert len(frames) == 2
    assert loads(frames) == b"t" * OOB_THRESHOLD


def test_big_bytearray_goes_out_of_band() -> None:
    value = bytearray(b"ab" * OOB_THRESHOLD)
    frames = dumps(value)
    assert len(frames) == 2
    back = loads(frames)
    assert type(back) is bytearray
    assert back == value
    back[0] = 0  # a private, writable copy
    assert value[0] == ord("a")


def test_big_memoryview_goes_out_of_band() -> None:
    source = bytes(range(256)) * (2 * OOB_THRESHOLD // 256)
    value = memoryview(source)
    frames = dumps(value)
    assert len(frames) == 2
    back = loads(frames)
    assert type(back) is memoryview
    assert back == value
    assert back.tobytes() == source


def test_small_memoryview_comes_back_as_memoryview() -> None:
    # BUG: cloudpickle reduces a memoryview to bytes(obj.tobytes()), so a small memoryview
    # pickles fine on the first pass of dumps() and comes back as bytes, while a big one (or a
    # small one next to big buffers) comes back as a memoryview: the type depends on size.
    value = memoryview(b"small view")
    back = loads(dumps(value))
    assert back == value
    assert type(back) is memoryview, f"got {type(back).__name__}"


def test_small_memoryview_next_to_big_buffers_is_a_memoryview() -> None:
    value = {"big": b"b" * OOB_THRESHOLD, "view": memoryview(b"little")}
    frames = dumps(value)
    assert len(frames) == 2  # the big bytes out of band; the small view stays in band
    back = loads(frames)
    assert type(back["view"]) is memoryview
    assert back["view"] == value["view"]
    assert back["big"] == value["big"]


def test_typed_memoryview_keeps_its_format_and_shape() -> None:
    # BUG: _OutOfBand sends PickleBuffer(buf).raw() (flat bytes) and rebuilds with memoryview(),
    # so a view of 4-byte ints comes back as 'B' bytes, 4 times as long, and unequal.
    ints = array.array("i", range(OOB_THRESHOLD))
    value = memoryview(ints)
    back = loads(dumps(value))
    assert (back.format, back.shape) == (value.format, value.shape)
    assert back == value


def test_numpy_arrays_go_out_of_band() -> None:
    big = np.arange(OOB_THRESHOLD, dtype=np.float64).reshape(256, -1)
    small = np.arange(10, dtype=np.int32)
    frames = dumps({"big": big, "small": small, "also": [big[::2].copy()]})
    assert len(frames) == 3  # two big arrays out of band; the small one in band
    back = loads(frames)
    for got, want in ((back["big"], big), (back["small"], small), (back["also"][0], big[::2])):
        assert got.dtype == want.dtype
        assert got.shape == want.shape
        assert np.array_equal(got, want)
    assert len(dumps(small)) == 1


def test_several_big_buffers_in_containers() -> None:
    value = ([b"1" * OOB_THRESHOLD, bytearray(b"2" * OOB_THRESHOLD)], {"k": (b"tiny",)})
    frames = dumps(value)
    assert len(frames) == 3
    back = loads(frames)
    assert back == value
    assert type(back[0][0]) is bytes
    assert type(back[0][1]) is bytearray


def test_same_big_buffer_twice_is_sent_once() -> None:
    big = b"s" * OOB_THRESHOLD
    frames = dumps([big, big])
    assert len(frames) == 2
    a, b = loads(frames)
    assert a == b == big


def test_loads_accepts_frame_like_objects() -> None:
    class FakeFrame:
        def __init__(self, data: bytes) -> None:
            self.buffer = memoryview(data)

    value = {"big": b"f" * OOB_THRESHOLD, "n": 1}
    frames = dumps(value)
    assert loads([FakeFrame(bytes(f)) for f in frames]) == value


def test_dumps_reraises_what_pickling_raised() -> None:
    with pytest.raises(TypeError, match="Unpicklable objects stay home"):
        dumps([Unpicklable()])


# ---------------------------------------------------------------------------------------------
# Calls


def test_dumps_call_roundtrip() -> None:
    frames = dumps_call((1, lambda v: v + 1, Point(1, 1)), {"k": "v", "data": b"d" * OOB_THRESHOLD})
    assert len(frames) == 2
    args, kwargs, options = loads(frames)
    assert options is None
    assert type(args) is tuple
    assert args[0] == 1
    assert args[1](1) == 2
    assert args[2] == Point(1, 1)
    assert kwargs == {"k": "v", "data": b"d" * OOB_THRESHOLD}


def test_dumps_call_names_the_positional_argument() -> None:
    with pytest.raises(squall.SerializationError) as info:
        dumps_call((1, "ok", Unpicklable()), {"fine": 2})
    message = str(info.value)
    assert "argument 2 of type Unpicklable" in message
    assert "Unpicklable objects stay home" in message
    assert "keyword" not in message
    assert isinstance(info.value.__cause__, TypeError)


def test_dumps_call_names_the_keyword_argument() -> None:
    with pytest.raises(squall.SerializationError) as info:
        dumps_call((1,), {"fine": 2, "k": (x for x in range(3))})
    message = str(info.value)
    assert "keyword argument 'k' of type generator" in message


def test_dumps_call_names_the_first_culprit() -> None:
    with pytest.raises(squall.SerializationError, match="argument 0 of type lock"):
        dumps_call((threading.Lock(), Unpicklable()), {})


# ---------------------------------------------------------------------------------------------
# Functions


def test_dumps_function_hash_is_stable_and_matches_body() -> None:
    add = make_adder(3)
    h1, body1 = dumps_function(add)
    h2, body2 = dumps_function(add)
    assert h1 == h2
    assert body1 == body2
    assert len(h1) == 16
    assert h1 == function_hash(body1)


def test_dumps_function_hash_differs_for_different_closure_values() -> None:
    h1, body1 = dumps_function(make_adder(1))
    h2, body2 = dumps_function(make_adder(2))
    assert h1 != h2
    assert body1 != body2
    assert dumps_function(make_adder(1))[0] == h1  # equal closures: equal hashes


def test_dumps_function_hash_differs_for_different_functions() -> None:
    assert dumps_function(make_adder(1))[0] != dumps_function(raise_value_error)[0]


def test_dumps_function_of_unpicklable_closure() -> None:
    lock = threading.Lock()

    def holds_lock() -> bool:
        return lock.locked()

    with pytest.raises(squall.SerializationError, match="holds_lock") as info:
        dumps_function(holds_lock)
    assert info.value.__cause__ is not None


def test_dumps_function_rejects_non_callables() -> None:
    with pytest.raises(TypeError, match="not callable"):
        dumps_function(42)  # type: ignore[arg-type]


def test_loads_function_roundtrip() -> None:
    _, body = dumps_function(make_adder(10))
    fn = loads_function(body)
    assert fn(5) == 15
    _, body = dumps_function(lambda a, b=2: a * b)
    assert loads_function(memoryview(body))(4) == 8


def test_loads_function_refuses_non_callables() -> None:
    with pytest.raises(squall.SerializationError, match="unpickled to a int"):
        loads_function(pickle.dumps(3))


# ---------------------------------------------------------------------------------------------
# Exceptions


def test_exception_roundtrip_keeps_type_message_and_traceback() -> None:
    exc = caught(raise_value_error)
    frames = dumps_exception(exc)
    back = loads_exception(frames)
    assert type(back) is ValueError
    assert back.args == ("boom: bad value 42",)
    cause = back.__cause__
    assert isinstance(cause, squall.RemoteTraceback)
    expected_tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    assert cause.tb == expected_tb
    assert "raise_value_error" in cause.tb
    assert "ValueError: boom: bad value 42" in cause.tb
    assert "Remote traceback" in str(cause)
    assert back.remote_traceback == expected_tb  # type: ignore[attr-defined]


def test_exception_that_cannot_unpickle_becomes_task_failed() -> None:
    exc = caught(raise_two_arg_error)
    pickle.dumps(exc)  # precondition: it does pickle...
    with pytest.raises(TypeError):
        pickle.loads(pickle.dumps(exc))  # ...but never loads
    frames = dumps_exception(exc)
    assert frames[1:] == [b""]  # the worker does not ship a pickle that can never load
    back = loads_exception(frames)
    assert type(back) is squall.TaskFailed
    assert isinstance(back, squall.SquallError)
    assert back.type_name == f"{TwoArgError.__module__}.TwoArgError"
    assert back.remote_message == "code 7: disk on fire"
    assert "TwoArgError: code 7: disk on fire" in back.remote_traceback
    assert str(back) == f"{back.type_name}: code 7: disk on fire"
    assert isinstance(back.__cause__, squall.RemoteTraceback)
    assert back.__cause__.tb == back.remote_traceback


def test_loads_exception_survives_a_pickle_that_does_not_load() -> None:
    # As from a peer that did not check: the pickle is there, but unpickling it raises.
    exc = caught(raise_two_arg_error)
    summary = dumps_exception(exc)[0]
    back = loads_exception([summary, pickle.dumps(exc)])
    assert type(back) is squall.TaskFailed
    assert back.remote_message == "code 7: disk on fire"
    assert isinstance(back.__cause__, squall.RemoteTraceback)


def test_unpicklable_exception_becomes_task_failed() -> None:
    class Local(Exception):
        def __reduce__(self) -> Any:
            raise TypeError("no")

    back = loads_exception(dumps_exception(Local("went wrong")))
    assert isinstance(back, squall.TaskFailed)
    assert back.type_name.endswith("Local")
    assert back.remote_message == "went wrong"


def test_builtin_exception_type_name_has_no_module() -> None:
    frames = dumps_exception(KeyError("k"))
    frames[1] = b""  # as if it had not pickled
    back = loads_exception(frames)
    assert isinstance(back, squall.TaskFailed)
    assert back.type_name == "KeyError"


def test_task_failed_pickles() -> None:
    exc = squall.TaskFailed("mod.Err", "msg", "tb text")
    back = pickle.loads(pickle.dumps(exc))
    assert (back.type_name, back.remote_message, back.remote_traceback) == (
        "mod.Err",
        "msg",
        "tb text",
    )


def test_describe() -> None:
    assert serialization.describe(make_adder) == "make_adder"
    assert serialization.describe(make_adder(1)) == "make_adder.<locals>.add"
    assert serialization.describe(Point(1, 2).norm1) == "Point.norm1"


@pytest.mark.parametrize(
    "value",
    [5, "text", None, True, 2.5, b"raw", (1, "a"), [1, [2, 3]], {"k": (1, 2)}, ((7,), {}, None)],
)
def test_plain_values_take_the_standard_pickler_and_make_cloudpickles_bytes(value) -> None:
    assert serialization._plain(value)
    assert serialization.dumps(value) == serialization._dump(value)


def test_values_holding_functions_or_local_classes_still_go_through_cloudpickle() -> None:
    class Local:
        def __eq__(self, other: object) -> bool:
            return type(other).__name__ == "Local"

    def shout(s: str) -> str:
        return s.upper()

    for value in [(shout,), {"f": lambda: 1}, [Local()], ((Local(),), {}, None)]:
        assert not serialization._plain(value)
    (fn,) = serialization.loads(serialization.dumps((shout,)))
    assert fn("a") == "A"
    assert serialization.loads(serialization.dumps([Local()])) == [Local()]
