#!/usr/bin/env bash
# `make test-wheel`: the wheel as a user gets it. Installed with pip into a fresh venv (numpy
# from the index or pip's cache), then used from a directory far from the checkout, with no
# TIDEPOOL_LIBRARY: the package must find the library it carries.
set -euo pipefail
checkout=$(cd "$(dirname "$0")" && pwd)
wheel=$(realpath "$1")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
name=$(basename "$wheel")
case "$name" in
    tidepool-*-py3-none-manylinux_*_x86_64.whl) ;;
    *) echo "FAIL wheel name $name is not tagged py3-none-manylinux_*_x86_64"; exit 1 ;;
esac
python3 - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
for required in ("tidepool/libtidepool.so", "tidepool/py.typed", "tidepool/__init__.py"):
    assert required in names, f"{required} is not in the wheel: {names}"
assert not any("tests/" in n for n in names), names
PY
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q "$wheel"
cd "$work"
env -u TIDEPOOL_LIBRARY -u PYTHONPATH "$work/venv/bin/python" - <<'PY'
import numpy as np
import tidepool

assert "site-packages/tidepool/libtidepool.so" in tidepool.library_path, tidepool.library_path
x = np.arange(2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3)
y = tidepool.nn.AvgPool2d(2)(x)
expected = x.reshape(2, 2, 2, 2, 2, 3).mean(axis=(2, 4))
np.testing.assert_allclose(y, expected, rtol=1e-6)
assert tidepool.__version__ == tidepool.library_version()
print(f"wheel ok: tidepool {tidepool.__version__} from {tidepool.library_path}")
PY

# The package installed straight from the checkout (not editable), as `pip install
# bindings/python` does: it must carry the library `make build` left.
python3 -m venv "$work/venv2"
"$work/venv2/bin/pip" install -q "$checkout"
rm -rf "$checkout/build" "$checkout/tidepool.egg-info"  # what pip's in-tree build leaves
env -u TIDEPOOL_LIBRARY -u PYTHONPATH "$work/venv2/bin/python" - <<'PY'
import numpy as np
import tidepool

assert "site-packages/tidepool/libtidepool.so" in tidepool.library_path, tidepool.library_path
assert tidepool.max_pool1d(np.arange(4, dtype=np.int8).reshape(1, 4, 1), 2).ravel().tolist() == [1, 3]
print(f"pip install bindings/python ok: {tidepool.library_path}")
PY
