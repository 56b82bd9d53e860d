"""The raw layer (_lib.py) against include/tidepool.h: every constant, every struct's size and
field offsets, and every prototype the binding declares. C and Swift check the same header at
compile time; without this test a changed header would leave Python silently wrong."""

import ctypes
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tidepool import _lib

HEADER = Path(__file__).resolve().parents[3] / "include" / "tidepool.h"


def header_text():
    text = HEADER.read_text()
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)  # comments hold example code
    return text


def header_constants():
    text = header_text()
    values = {}
    for name, value in re.findall(r"^#define (TP_[A-Z0-9_]+) (-?\d+)\s*$", text, flags=re.M):
        values[name] = int(value)
    for body in re.findall(r"typedef enum \w+ \{(.*?)\}", text, flags=re.S):
        for name, value in re.findall(r"(TP_[A-Z0-9_]+)\s*=\s*(-?\d+)", body):
            values[name] = int(value)
    return values


def binding_constants():
    return {name: value for name, value in vars(_lib).items() if name.startswith("TP_") and isinstance(value, int)}


def test_every_binding_constant_matches_the_header():
    header = header_constants()
    binding = binding_constants()
    assert binding, "no TP_ constants found in _lib"
    missing = sorted(set(binding) - set(header))
    assert not missing, f"_lib defines constants the header lacks: {missing}"
    wrong = {name: (value, header[name]) for name, value in binding.items() if header[name] != value}
    assert not wrong, f"_lib value != header value: {wrong}"


def test_every_status_dtype_and_kind_is_in_the_binding():
    header = header_constants()
    enum_names = [n for n in header if n.startswith(("TP_OK", "TP_ERR_", "TP_DTYPE_", "TP_POOL_"))]
    assert len(enum_names) >= 20
    missing = sorted(set(enum_names) - set(binding_constants()))
    assert not missing, f"header constants the binding lacks: {missing}"


STRUCTS = {"tp_tensor": _lib.tp_tensor, "tp_pool_desc": _lib.tp_pool_desc, "tp_backward_options": _lib.tp_backward_options,
           "tp_client_options": _lib.tp_client_options}


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory):
    """sizeof and offsetof of every field of the binding's structs, as the C compiler sees them."""
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    assert compiler, "a C compiler is needed to check struct layouts (make test installs build-essential)"
    lines = ["#include <stddef.h>", "#include <stdio.h>", '#include "tidepool.h"', "int main(void) {", 'printf("{");']
    first = True
    for name, struct in STRUCTS.items():
        for field, *_ in struct._fields_:
            sep = "" if first else ","
            first = False
            lines.append(f'printf("{sep}\\"{name}.{field}\\": %zu", offsetof({name}, {field}));')
        lines.append(f'printf(",\\"{name}\\": %zu", sizeof({name}));')
    lines += ['printf("}\\n");', "return 0;", "}"]
    directory = tmp_path_factory.mktemp("layout")
    source, program = directory / "layout.c", directory / "layout"
    source.write_text("\n".join(lines))
    subprocess.run([compiler, "-std=c99", "-I", str(HEADER.parent), str(source), "-o", str(program)], check=True)
    return json.loads(subprocess.run([str(program)], check=True, capture_output=True, text=True).stdout)


@pytest.mark.parametrize("name", sorted(STRUCTS))
def test_struct_layout_matches_the_header(c_layout, name):
    struct = STRUCTS[name]
    assert ctypes.sizeof(struct) == c_layout[name]
    for field, *_ in struct._fields_:
        assert getattr(struct, field).offset == c_layout[f"{name}.{field}"], field


# C parameter and return types -> the ctypes type the binding must declare for them.
C_TYPES = {
    "void": None,
    "tp_status": ctypes.c_int,
    "uint32_t": ctypes.c_uint32,
    "int32_t": ctypes.c_int32,
    "uint64_t": ctypes.c_uint64,
    "size_t": ctypes.c_size_t,
    "const char *": ctypes.c_char_p,
    "char *": ctypes.c_char_p,
    "void *": ctypes.c_void_p,
    "double *": ctypes.POINTER(ctypes.c_double),
    "size_t *": ctypes.POINTER(ctypes.c_size_t),
    "uint64_t *": ctypes.POINTER(ctypes.c_uint64),
    "const int64_t *": ctypes.POINTER(ctypes.c_int64),
    "tp_tensor *": ctypes.POINTER(_lib.tp_tensor),
    "const tp_tensor *": ctypes.POINTER(_lib.tp_tensor),
    "tp_pool_desc *": ctypes.POINTER(_lib.tp_pool_desc),
    "const tp_pool_desc *": ctypes.POINTER(_lib.tp_pool_desc),
    "const tp_backward_options *": ctypes.POINTER(_lib.tp_backward_options),
    "const tp_client_options *": ctypes.POINTER(_lib.tp_client_options),
    # Opaque handles travel as void pointers.
    "tp_client *": ctypes.c_void_p,
    "tp_client **": ctypes.POINTER(ctypes.c_void_p),
    "tp_buffer *": ctypes.c_void_p,
    "const tp_buffer *": ctypes.c_void_p,
    "tp_buffer **": ctypes.POINTER(ctypes.c_void_p),
}


def c_type(declaration):
    """The type of a parameter declaration ("const int64_t *kernel_size" -> "const int64_t *")."""
    declaration = " ".join(declaration.split())
    match = re.fullmatch(r"(.*?)(\**)\s*\w*", declaration)
    base, stars = match.group(1).strip(), match.group(2)
    if not stars and declaration.count("*"):
        base, stars = declaration.rsplit("*", 1)[0].rstrip("* "), "*" * declaration.count("*")
    return f"{base} {stars}".strip() if stars else base


def header_functions():
    functions = {}
    pattern = r"^([A-Za-z_][\w ]*?\s*\**)\s*(tp_\w+)\(([^)]*)\);"
    for ret, name, params in re.findall(pattern, header_text(), flags=re.M | re.S):
        params = " ".join(params.split())
        args = [] if params in ("", "void") else [c_type(p) for p in params.split(",")]
        functions[name] = (" ".join(ret.split()).replace(" *", " *"), args)
    return functions


def test_every_prototype_matches_the_header():
    functions = header_functions()
    assert "tp_pool" in functions and "tp_client_cancel" in functions
    for name, (restype, argtypes) in _lib.PROTOTYPES.items():
        assert name in functions, f"{name} is not declared in tidepool.h"
        ret, args = functions[name]
        assert C_TYPES[ret] == restype, f"{name} returns {ret}"
        assert len(args) == len(argtypes), f"{name} takes {len(args)} arguments in C, {len(argtypes)} in _lib"
        for index, (c_arg, declared) in enumerate(zip(args, argtypes)):
            assert C_TYPES[c_arg] == declared, f"{name} argument {index}: C {c_arg}, _lib {declared}"


def test_the_binding_covers_the_functions_it_needs():
    # Every tp_ function of the header except the function table (for dlsym users).
    missing = sorted(set(header_functions()) - set(_lib.PROTOTYPES) - {"tp_get_api"})
    assert not missing, f"header functions without a prototype in _lib: {missing}"


def test_versions_have_one_source():
    # The header's TP_VERSION_MAJOR.MINOR.PATCH is what the library, the package and the
    # pyproject metadata say.
    header = header_constants()
    version = f"{header['TP_VERSION_MAJOR']}.{header['TP_VERSION_MINOR']}.{header['TP_VERSION_PATCH']}"
    import tidepool

    assert tidepool.library_version() == version
    assert tidepool.__version__ == version
    # The distribution's version is read from the header by setup.py, not written anywhere.
    package = HEADER.parents[1] / "bindings" / "python"
    assert 'dynamic = ["version"]' in (package / "pyproject.toml").read_text()
    result = subprocess.run([sys.executable, "setup.py", "--version"], cwd=package, capture_output=True, text=True)
    assert result.stdout.strip().splitlines()[-1] == version, result.stdout + result.stderr
