"""The README's map of the code ("Where things are") is true: each package's row names every module of that
package, and no module of another package (as it once put ``tensorboard`` under ``itm/training/``)."""
import re

from conftest import ROOT


def _rows() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Where things are"):]
    table = table[:table.index("\n## ", 1)]
    return dict(re.findall(r"^\| `itm/(\w+)/` \| (.*) \|$", table, re.MULTILINE))


def test_each_package_row_names_its_own_modules_and_no_other_packages():
    packages = {p.name: {m.stem for m in p.glob("*.py") if m.stem != "__init__"}
                for p in (ROOT / "itm").iterdir() if (p / "__init__.py").is_file()}
    rows = _rows()
    assert set(rows) == set(packages), "a package of itm/ has no row in the README's map, or a row names none"
    for package, row in rows.items():
        named = set(re.findall(r"`(\w+)`", row))
        assert packages[package] <= named, f"itm/{package}/ modules missing from its row: {packages[package] - named}"
        elsewhere = {m for other, modules in packages.items() if other != package for m in modules} - packages[package]
        assert not named & elsewhere, f"the itm/{package}/ row names modules of another package: {named & elsewhere}"
