"""The version of itm, written in one place: pyproject.toml, `itm --version`, `itm.__version__` and the
web API read it."""
__version__ = "0.2.0"
