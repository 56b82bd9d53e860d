"""The wheel carries libtidepool.so, so it is a platform wheel: tagged py3-none-<platform>
(any Python 3, no Python ABI: the library is loaded through ctypes). The version is the
C header's, the one source of every Tidepool version. Everything else is in pyproject.toml."""

import re
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution


def header_version():
    """TP_VERSION_MAJOR.MINOR.PATCH of include/tidepool.h (a wheel's staging copy has the
    header beside this file)."""
    here = Path(__file__).resolve().parent
    for header in (here / "tidepool.h", here.parent.parent / "include" / "tidepool.h"):
        if header.exists():
            parts = dict(re.findall(r"^#define TP_VERSION_(MAJOR|MINOR|PATCH) (\d+)$", header.read_text(), re.M))
            return f"{parts['MAJOR']}.{parts['MINOR']}.{parts['PATCH']}"
    raise SystemExit("tidepool.h not found: the package's version is the header's")


class BuildWithLibrary(build_py):
    """A build from the checkout (`pip install bindings/python`, `pip wheel bindings/python`)
    takes the library `make build` left in .build/release, stripped; `make wheel`'s staging copy
    has it in the package already."""

    def run(self):
        super().run()
        here = Path(__file__).resolve().parent
        if (here / "tidepool" / "libtidepool.so").exists():
            return  # in the package already (package data): make wheel's staging copy
        target = Path(self.build_lib) / "tidepool" / "libtidepool.so"
        built = here.parent.parent / ".build" / "release" / "libtidepool.so"
        if not built.exists():
            raise SystemExit(f"{built} is missing: run `make build` first (or `make wheel`)")
        if shutil.which("objcopy"):
            subprocess.run(["objcopy", "--strip-debug", "--strip-unneeded", str(built), str(target)], check=True)
        else:
            shutil.copyfile(built, target)


class BinaryDistribution(Distribution):
    """Holds a binary (the library), so its files install as platform-specific."""

    def has_ext_modules(self):
        return True


class PlatformWheel(bdist_wheel):
    def get_tag(self):
        _, _, platform = super().get_tag()
        return "py3", "none", platform


setup(version=header_version(), distclass=BinaryDistribution,
      cmdclass={"bdist_wheel": PlatformWheel, "build_py": BuildWithLibrary})
