"""Invalid arguments raise ValueError with MLX's wording (checked against MLX itself);
every exception derives from tidepool.Error; the library lookup says what it tried."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.nn as mnn
import numpy as np
import pytest

import tidepool
from conftest import LAYERS


def mlx_message(factory, *args, **kwargs):
    with pytest.raises(ValueError) as info:
        factory(*args, **kwargs)
    return str(info.value)


BAD_CONSTRUCTOR_ARGUMENTS = [
    dict(kernel_size=0),
    dict(kernel_size=2, stride=0),
    dict(kernel_size=2, stride=-3),
    dict(kernel_size=2, padding=-1),
    dict(kernel_size=2.0),
    dict(kernel_size=(2, 2, 2, 2)),
    dict(kernel_size=2, stride=(1, 1, 1, 1)),
    dict(kernel_size=2, padding="same"),
]


@pytest.mark.parametrize("kind, d", LAYERS)
@pytest.mark.parametrize("arguments", BAD_CONSTRUCTOR_ARGUMENTS, ids=str)
def test_constructor_errors_use_mlx_wording(kind, d, arguments):
    name = f"{kind}Pool{d}d"
    theirs = mlx_message(getattr(mnn, name), **arguments)
    with pytest.raises(ValueError) as info:
        getattr(tidepool.nn, name)(**arguments)
    assert str(info.value) == theirs
    assert isinstance(info.value, tidepool.Error)


@pytest.mark.parametrize("kind, d", LAYERS)
def test_repr_matches_mlx(kind, d):
    name = f"{kind}Pool{d}d"
    for arguments in (dict(kernel_size=3, padding=2), dict(kernel_size=2, stride=1), dict(kernel_size=tuple(range(1, d + 1)))):
        assert repr(getattr(tidepool.nn, name)(**arguments)) == repr(getattr(mnn, name)(**arguments))


def test_input_errors_name_what_was_wrong():
    layer = tidepool.nn.AvgPool3d(2)
    with pytest.raises(ValueError, match=r"\[AvgPool3d\] input must have 5 dimensions \(N, D, H, W, C\) but has 4"):
        layer(np.zeros((2, 4, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"output length would be negative: floor\(\(2 \+ 2\*0 - 5\) / 1\) \+ 1 = -2"):
        tidepool.avg_pool1d(np.zeros((1, 2, 1), np.float32), 5, 1)
    with pytest.raises(ValueError, match=r"dtype complex64 is not supported"):
        tidepool.max_pool1d(np.zeros((1, 2, 1), np.complex64), 2)
    with pytest.raises(ValueError, match=r"dtype object is not supported"):
        tidepool.max_pool1d(np.array([[[object()]]]), 1)
    with pytest.raises(ValueError, match=r"cannot be converted"):
        tidepool.max_pool1d([[[1], [2, 3]]], 1)
    with pytest.raises(ValueError, match=r"out must have shape \(1, 1, 1\) and dtype float32"):
        tidepool.avg_pool1d(np.zeros((1, 2, 1), np.float32), 2, out=np.empty((1, 2, 1), np.float32))
    with pytest.raises(ValueError, match=r"C-contiguous"):
        tidepool.avg_pool1d(np.zeros((1, 4, 2), np.float32), 2, out=np.empty((1, 2, 4), np.float32)[:, :, ::2])
    with pytest.raises(ValueError, match=r"num_threads must be an integer"):
        tidepool.set_num_threads(1.5)
    with pytest.raises(ValueError, match=r"thread count must be between 0"):
        tidepool.set_num_threads(-1)


def test_library_errors_carry_status():
    with pytest.raises(tidepool.InvalidArgumentError) as info:
        tidepool.avg_pool1d(np.zeros((1, 2, 1), np.float32), 5, 1)
    from tidepool import _lib

    assert info.value.status == _lib.TP_ERR_SHAPE


def test_missing_library_lists_the_paths_tried(tmp_path, monkeypatch):
    # A copy of the package far from the repository's build: none of its candidates is there.
    shutil.copytree(Path(tidepool.__file__).parent, tmp_path / "tidepool",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    env = dict(os.environ, PYTHONPATH=str(tmp_path), LD_LIBRARY_PATH="")
    env.pop("TIDEPOOL_LIBRARY", None)
    result = subprocess.run([sys.executable, "-c", "import tidepool; print(tidepool.library_path)"], env=env,
                            cwd=tmp_path, capture_output=True, text=True)
    if result.returncode == 0:
        # An installed library (make install) is the last candidate: nothing else was there.
        from tidepool import _lib

        assert result.stdout.strip() == _lib.ctypes.util.find_library("tidepool")
        return
    assert "LibraryNotFoundError" in result.stderr
    assert f"{tmp_path / 'tidepool' / 'libtidepool.so'}: no such file" in result.stderr


def test_failed_override_is_an_error_not_a_fallback(tmp_path):
    # The checkout's own library would load; an override that does not must not be replaced
    # by it silently (a mistyped path would measure or ship another build).
    env = dict(os.environ, TIDEPOOL_LIBRARY=str(tmp_path / "nonexistent.so"),
               PYTHONPATH=str(Path(tidepool.__file__).parent.parent))
    result = subprocess.run([sys.executable, "-c", "import tidepool"], env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "LibraryNotFoundError: TIDEPOOL_LIBRARY names a library that cannot be used" in result.stderr
    assert f"{tmp_path / 'nonexistent.so'}: no such file" in result.stderr
    # A file that is not a library, and one without the functions this package needs.
    (tmp_path / "garbage.so").write_bytes(b"not an ELF file")
    env["TIDEPOOL_LIBRARY"] = str(tmp_path / "garbage.so")
    result = subprocess.run([sys.executable, "-c", "import tidepool"], env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "garbage.so" in result.stderr and "cannot be used" in result.stderr
    from tidepool import _lib

    env["TIDEPOOL_LIBRARY"] = _lib.ctypes.util.find_library("c")
    result = subprocess.run([sys.executable, "-c", "import tidepool"], env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "lacks tp_" in result.stderr and "cannot be used" in result.stderr


def test_candidates_are_the_override_alone(monkeypatch):
    from tidepool import _lib

    monkeypatch.setenv("TIDEPOOL_LIBRARY", "/some/where/libtidepool.so")
    assert _lib.candidate_paths() == ["/some/where/libtidepool.so"]
    monkeypatch.setenv("TIDEPOOL_LIBRARY", "")
    assert _lib.candidate_paths()[0] == str(Path(_lib.__file__).resolve().parent / "libtidepool.so")
    monkeypatch.delenv("TIDEPOOL_LIBRARY")
    assert len(_lib.candidate_paths()) >= 2


def test_library_override_is_used(tmp_path):
    library = Path(tidepool.library_path)
    copy = tmp_path / "libtidepool.so"
    shutil.copy(library, copy)
    env = dict(os.environ, TIDEPOOL_LIBRARY=str(copy), PYTHONPATH=str(Path(tidepool.__file__).parent.parent))
    result = subprocess.run([sys.executable, "-c", "import tidepool; print(tidepool.library_path)"], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(copy)


WITHOUT_LIBZMQ = r"""
set -eu
for library in {libraries}; do mount --bind /dev/null "$library"; done
{link_example}
PYTHONPATH={python_path} {python} -c '
import numpy as np, tidepool
y = tidepool.avg_pool2d(np.ones((1, 4, 4, 2), np.float32), 2)
assert y.shape == (1, 2, 2, 2) and (y == 1).all()
print("in-process ok")
try:
    tidepool.connect("tcp://127.0.0.1:9", timeout=1)
except tidepool.Error as error:
    print("client:", error.status, error)
'
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a private mount (unshare -m)")
def test_in_process_pooling_needs_no_libzmq():
    """On a system without libzmq, the library loads and pools; the client says libzmq is
    missing (libzmq is loaded on first use, not linked)."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    libraries = sorted({os.path.realpath(p) for d in ("/usr/lib", "/lib", "/usr/local/lib")
                        for p in Path(d).rglob("libzmq.so*")})
    assert libraries, "libzmq is not installed where expected"
    repo = Path(__file__).resolve().parents[3]
    script = WITHOUT_LIBZMQ.format(libraries=" ".join(libraries), link_example=repo / "bindings/c/build/link_example",
                                   python=sys.executable, python_path=repo / "bindings/python")
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "in-process ok" in output, output
    status, message = output.split("client: ", 1)[1].split(" ", 1)
    assert int(status) == 18, output  # TP_ERR_SYSTEM
    assert "libzmq cannot be loaded" in message and "libzmq5" in message, output
