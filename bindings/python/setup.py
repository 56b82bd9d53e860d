"""The wheel carries libtidepool.so, so it is a platform wheel: tagged py3-none-<platform>
(any Python 3, no Python ABI: the library is loaded through ctypes). Everything else is in
pyproject.toml."""

from setuptools import setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.dist import Distribution


class BinaryDistribution(Distribution):
    """Holds a binary (the library), so its files install as platform-specific."""

    def has_ext_modules(self):
        return True


class PlatformWheel(bdist_wheel):
    def get_tag(self):
        _, _, platform = super().get_tag()
        return "py3", "none", platform


setup(distclass=BinaryDistribution, cmdclass={"bdist_wheel": PlatformWheel})
