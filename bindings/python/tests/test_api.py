"""The public Python API as IDEs, help() and type checkers see it: functions and Client methods
written out with signatures, annotations and docstrings; the package marked typed; the raw
layer translating only, with errors raised above it."""

import inspect
from pathlib import Path

import numpy as np
import pytest

import tidepool
from tidepool import _lib, _native

NAMES = [f"{kind}_pool{d}d" for kind in ("avg", "max") for d in (1, 2, 3)]
LAYOUTS = {1: "(N, L, C)", 2: "(N, H, W, C)", 3: "(N, D, H, W, C)"}


@pytest.mark.parametrize("name", NAMES)
def test_functions_are_written_out_with_types_and_docs(name):
    function = getattr(tidepool, name)
    assert function.__module__ == "tidepool.functional" and function.__name__ == name
    signature = inspect.signature(function)
    options = ["ceil_mode", "count_include_pad"] if name.startswith("avg") else ["ceil_mode"]
    assert list(signature.parameters) == ["x", "kernel_size", "stride", "padding", *options, "out"]
    assert signature.parameters["ceil_mode"].default is False
    assert signature.parameters["out"].kind is inspect.Parameter.KEYWORD_ONLY
    assert signature.parameters["stride"].default is None and signature.parameters["padding"].default == 0
    assert all(p.annotation is not inspect.Parameter.empty for p in signature.parameters.values())
    assert signature.return_annotation == "np.ndarray"
    assert LAYOUTS[int(name[-2])] in function.__doc__ and "Raises:" in function.__doc__


@pytest.mark.parametrize("name", NAMES)
def test_client_methods_are_written_out_in_the_class(name):
    method = tidepool.Client.__dict__[name]  # defined in the class body, not attached at import
    signature = inspect.signature(method)
    options = ["ceil_mode", "count_include_pad"] if name.startswith("avg") else ["ceil_mode"]
    assert list(signature.parameters) == ["self", "x", "kernel_size", "stride", "padding", *options, "out"]
    assert signature.return_annotation == "np.ndarray"
    assert f"tidepool.{name}" in method.__doc__


def test_layer_classes_show_their_constructor():
    signature = inspect.signature(tidepool.nn.MaxPool2d)
    assert list(signature.parameters) == ["kernel_size", "stride", "padding", "ceil_mode"]
    assert list(inspect.signature(tidepool.nn.AvgPool3d).parameters) == ["kernel_size", "stride", "padding", "ceil_mode",
                                                                         "count_include_pad"]
    assert "(N, H, W, C)" in tidepool.nn.MaxPool2d.__doc__


@pytest.mark.parametrize("name", ["AvgPool1d", "AvgPool2d", "AvgPool3d", "MaxPool1d", "MaxPool2d", "MaxPool3d"])
def test_unknown_keywords_name_the_public_class(name):
    with pytest.raises(TypeError, match=rf"^{name}\.__init__\(\) got an unexpected keyword argument 'return_indices'"):
        getattr(tidepool.nn, name)(2, return_indices=True)
    with pytest.raises(TypeError, match=r"^avg_pool2d\(\) got an unexpected keyword argument 'divisor_override'"):
        tidepool.avg_pool2d(np.zeros((1, 2, 2, 1), np.float32), 2, divisor_override=3)


def test_package_is_marked_typed():
    assert (Path(tidepool.__file__).parent / "py.typed").is_file()


def test_raw_layer_raises_nothing_when_the_library_is_missing(monkeypatch):
    monkeypatch.setattr(_lib, "candidate_paths", lambda: ["/nonexistent/libtidepool.so", "find_library('tidepool')"])
    library, path, tried = _lib.load_library()
    assert library is None and path is None
    assert tried == ["/nonexistent/libtidepool.so: no such file", "find_library('tidepool'): not found"]


def test_statuses_become_exceptions_in_one_place():
    # _native.error maps every status; the Pythonic layer raises what it returns.
    assert isinstance(_native.error(_lib.TP_ERR_SHAPE, "m"), tidepool.InvalidArgumentError)
    assert isinstance(_native.error(_lib.TP_ERR_BUSY, "m"), tidepool.BusyError)
    assert isinstance(_native.error(_lib.TP_ERR_PERMISSION, "m"), PermissionError)
    other = _native.error(_lib.TP_ERR_PROTOCOL, "m")
    assert type(other) is tidepool.Error and other.status == _lib.TP_ERR_PROTOCOL and "TP_ERR_PROTOCOL" in str(other)
    with pytest.raises(tidepool.InvalidArgumentError, match=r"\[avg_pool1d\]"):
        tidepool.avg_pool1d(np.zeros((1, 2, 1), np.float32), 5, 1)


def _level_in_child(value):
    """tidepool.cpu_level() and standard error of a fresh interpreter with TIDEPOOL_CPU=value
    (None: unset)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TIDEPOOL_CPU"}
    if value is not None:
        env["TIDEPOOL_CPU"] = value
    code = "import tidepool, numpy as np; tidepool.avg_pool1d(np.ones((1, 4, 1), np.float32), 2); print(tidepool.cpu_level())"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip(), done.stderr


def _cpu_has_x86_64_v3():
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return {"avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "movbe", "abm", "xsave"} <= flags


def test_cpu_level_is_the_best_the_cpu_runs_unless_told():
    best, err = _level_in_child(None)
    assert best == ("x86-64-v3" if _cpu_has_x86_64_v3() else "x86-64")
    assert err == ""
    assert _level_in_child("auto") == (best, "")
    assert _level_in_child("baseline") == ("x86-64", "")
    level, err = _level_in_child("avx-2")
    assert level == best
    assert f"tidepool: TIDEPOOL_CPU=avx-2 names no CPU level" in err and f"using {best}" in err
    if best == "x86-64":
        level, err = _level_in_child("avx2")
        assert level == "x86-64" and "this CPU cannot run x86-64-v3" in err


def test_this_process_runs_the_level_it_was_told():
    import os

    forced = os.environ.get("TIDEPOOL_CPU")
    if forced == "baseline":
        assert tidepool.cpu_level() == "x86-64"
    else:
        assert tidepool.cpu_level() in ("x86-64", "x86-64-v3")


def test_a_library_older_than_the_package_is_skipped_with_the_reason(monkeypatch):
    # As if the package expected a function no library has: every candidate is passed over,
    # each saying which functions it lacks, instead of an AttributeError at import.
    monkeypatch.setitem(_lib.PROTOTYPES, "tp_from_the_future", (None, []))
    lib, path, tried = _lib.load_library()
    assert lib is None and path is None
    loaded = [t for t in tried if "lacks" in t]
    assert loaded, tried
    assert all("lacks tp_from_the_future (this package needs API version" in t for t in loaded), loaded
    assert f"version {tidepool.library_version()} lacks" in loaded[0]


def test_layers_reuse_what_they_checked_and_stay_exact():
    """A layer keeps the tensors of each (shape, strides, dtype) it has pooled and calls
    tp_pool with copies of them next time: every call's result is that of the checked path, for
    new arrays at other addresses, other dtypes, strided views, a misaligned address (which
    takes the checked path again), and from threads sharing the layer."""
    import threading

    from tidepool.functional import pool

    def checked(x):
        """The full path, which keeps nothing (the functional forms keep plans too)."""
        return pool(_lib.TP_POOL_AVG, 2, "avg_pool2d", x, 2, 1, 1)

    rng = np.random.default_rng(7)
    layer = tidepool.nn.AvgPool2d(2, 1, 1)
    for dtype in (np.float32, np.float64, np.int8, np.float32):
        for _ in range(3):
            x = (rng.standard_normal((2, 5, 6, 3)) * 10).astype(dtype)
            assert layer(x).tobytes() == checked(x).tobytes()
    assert len(layer._plan.kept) == 3
    view = rng.standard_normal((2, 5, 12, 3)).astype(np.float32)[:, :, ::2]
    for _ in range(2):
        assert layer(view).tobytes() == checked(view).tobytes()
    frozen = rng.standard_normal((2, 5, 6, 3)).astype(np.float32)
    frozen.flags.writeable = False
    for _ in range(2):
        assert layer(frozen).tobytes() == checked(frozen).tobytes()
    for _ in range(2):
        assert layer(np.zeros((0, 5, 6, 3), np.float32)).shape == (0, 6, 7, 3)
    raw = np.zeros(2 * 5 * 6 * 3 * 4 + 1, np.uint8)
    odd = raw[1:].view(np.float32).reshape(2, 5, 6, 3)  # misaligned: copied, as the checked path does
    odd[...] = rng.standard_normal(odd.shape)
    assert layer(odd).tobytes() == checked(np.ascontiguousarray(odd)).tobytes()
    assert layer(odd).tobytes() == checked(np.ascontiguousarray(odd)).tobytes()
    with pytest.raises(tidepool.InvalidArgumentError, match=r"\[AvgPool2d\] input must have 4 dimensions"):
        layer(np.zeros((5, 6, 3), np.float32))

    inputs = [rng.standard_normal((1, 9, 9, 2)).astype(np.float32) for _ in range(4)]
    expected = [checked(x).tobytes() for x in inputs]
    wrong = []

    def worker(i):
        for _ in range(300):
            if layer(inputs[i]).tobytes() != expected[i]:
                wrong.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong


def test_layers_fill_out_on_the_kept_path_and_check_it():
    """`layer(x, out=out)` takes the kept tensors too (the checked path cost 8x a call): the
    same bits as a new result, `out` returned; an `out` of the wrong shape, dtype or layout,
    read-only, or overlapping the input still gets the checked path's error and is not
    written."""
    rng = np.random.default_rng(11)
    layer = tidepool.nn.MaxPool2d(3, 1, 1)
    x = rng.standard_normal((2, 7, 6, 4)).astype(np.float32)
    original = x.copy()
    expected = layer(x)
    out = np.full_like(expected, np.nan)
    assert layer(x, out=out) is out
    assert out.tobytes() == expected.tobytes()
    assert len(layer._plan.kept) == 1
    # Kept from a call with `out` alone, then used with and without it.
    fresh = tidepool.nn.AvgPool2d(2, 1, 0)
    y = rng.standard_normal((1, 5, 5, 3))
    first = np.zeros((1, 4, 4, 3))
    fresh(y, out=first)
    assert len(fresh._plan.kept) == 1
    again = np.zeros((1, 4, 4, 3))
    assert fresh(y, out=again) is again and again.tobytes() == first.tobytes() == fresh(y).tobytes()
    frozen = np.zeros_like(expected)
    frozen.flags.writeable = False
    bad = [
        (np.zeros((2, 7, 6, 3), np.float32), "out must have shape"),
        (np.zeros_like(expected, dtype=np.float64), "out must have shape"),
        (np.zeros((2, 7, 6, 8), np.float32)[..., ::2], "writeable C-contiguous"),
        (frozen, "writeable C-contiguous"),
        ([[0.0]], "out must be a numpy array"),
    ]
    for candidate, message in bad:
        with pytest.raises(tidepool.InvalidArgumentError, match=message):
            layer(x, out=candidate)
    assert not frozen.any()
    with pytest.raises(tidepool.Error, match="overlaps the input"):
        layer(x, out=x)
    assert x.tobytes() == original.tobytes()


def test_layers_reuse_plans_for_every_float_dtype():
    """Second calls take the kept path for 16-bit floats too: bfloat16 (ml_dtypes) exports no
    buffer format, and taking its address through one raised ValueError on every second call."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(12)
    for dtype in (np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16)):
        x = rng.standard_normal((2, 6, 6, 3)).astype(dtype)
        for layer in (tidepool.nn.MaxPool2d(2, 1), tidepool.nn.AvgPool2d(3, 1, 1)):
            first = layer(x)
            assert layer(x).tobytes() == first.tobytes()
            out = np.zeros_like(first)
            assert layer(x, out=out) is out and out.tobytes() == first.tobytes()
            assert len(layer._plan.kept) == 1
        assert tidepool.max_pool2d(x, 2).tobytes() == tidepool.max_pool2d(x, 2).tobytes()


def test_addresses_are_the_datas_for_every_dtype_and_layout():
    """The kept path's address of an array (`_address`: a buffer view, through a same-size
    integer view for bfloat16, or `ctypes.data`) is the array's data for numpy's dtypes and
    ml_dtypes' bfloat16, contiguous or not, writeable or not, offset into a larger array."""
    from tidepool.functional import _address

    ml_dtypes = pytest.importorskip("ml_dtypes")
    for dtype in (np.dtype(ml_dtypes.bfloat16), np.float16, np.float32, np.float64, np.int8, np.uint8, np.int64):
        base = np.zeros((3, 5, 4), dtype)
        for array in (base, base[1:], base[:, 1:3], base[..., ::2], base.T):
            assert _address(array) == array.ctypes.data
            readonly = array.view()
            readonly.flags.writeable = False
            assert _address(readonly) == array.ctypes.data


def test_bfloat16_comes_with_ml_dtypes_imported_after_tidepool():
    """`import tidepool` does not import ml_dtypes (most of a second on its own); a bfloat16
    array made after it still pools, takes gradients and is listed in SUPPORTED_DTYPES, and an
    unsupported dtype's error lists bfloat16. Run in a fresh interpreter: this one has
    ml_dtypes (conftest)."""
    pytest.importorskip("ml_dtypes")
    import subprocess
    import sys

    code = """if True:
        import sys
        import numpy as np
        import tidepool
        assert "ml_dtypes" not in sys.modules, "import tidepool imported ml_dtypes"
        x = np.arange(2 * 6 * 6 * 3, dtype=np.float32).reshape(2, 6, 6, 3)
        assert tidepool.nn.AvgPool2d(2)(x).shape == (2, 3, 3, 3)
        assert "ml_dtypes" not in sys.modules, "a float32 call imported ml_dtypes"
        import ml_dtypes
        half = x.astype(ml_dtypes.bfloat16)
        for layer in (tidepool.nn.MaxPool2d(2, 1), tidepool.nn.AvgPool2d(3, 1, 1)):
            y = layer(half)
            assert y.dtype == half.dtype, y.dtype
            expected = layer(half.astype(np.float32)).astype(ml_dtypes.bfloat16)
            assert np.array_equal(y.astype(np.float32), expected.astype(np.float32))
        grad = tidepool.max_pool2d_vjp(half, np.ones((2, 3, 3, 3), half.dtype), 2)
        assert grad.dtype == half.dtype and float(grad.astype(np.float32).sum()) == 2 * 3 * 3 * 3
        assert np.dtype(ml_dtypes.bfloat16) in tidepool.SUPPORTED_DTYPES
        try:
            tidepool.avg_pool2d(x.astype(np.complex64), 2)
        except tidepool.InvalidArgumentError as error:
            assert "bfloat16, float16" in str(error), str(error)
        else:
            raise AssertionError("complex64 was accepted")
        print("ok")
    """
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_functional_forms_keep_plans_but_check_every_argument():
    """The functional forms keep a plan per set of plain int arguments: a float that equals
    a kept int is still refused, lists and numpy ints take the checked path, and results are
    those of the layer."""
    x = np.random.default_rng(3).standard_normal((1, 6, 6, 2)).astype(np.float32)
    first = tidepool.max_pool2d(x, 2, 1)
    assert tidepool.max_pool2d(x, 2, 1).tobytes() == first.tobytes() == tidepool.nn.MaxPool2d(2, 1)(x).tobytes()
    assert tidepool.max_pool2d(x, (2, 2), (1, 1)).tobytes() == first.tobytes()
    assert tidepool.max_pool2d(x, [2, 2], np.int64(1)).tobytes() == first.tobytes()
    with pytest.raises(tidepool.InvalidArgumentError, match=r"\[max_pool2d\] 'kernel_size' must be an integer"):
        tidepool.max_pool2d(x, 2.0, 1)
    with pytest.raises(tidepool.InvalidArgumentError, match=r"\[max_pool2d\] 'stride' must be an integer"):
        tidepool.max_pool2d(x, 2, (1.0, 1))
    with pytest.raises(tidepool.InvalidArgumentError, match=r"\[max_pool2d\] input must have 4 dimensions"):
        tidepool.max_pool2d(x[0], 2, 1)
