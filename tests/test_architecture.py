"""The dependency rules of docs/ARCHITECTURE.md, checked by reading every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
MODULES = sorted(p for pkg in ("medcodec", "medcodec_fed") for p in (SRC / pkg).rglob("*.py"))


def _name(path: Path) -> str:
    return ".".join(path.relative_to(SRC).with_suffix("").parts)


def _imports(path: Path, *, module_level: bool) -> set[str]:
    """Absolute names a module imports (relative imports resolved), at module level or anywhere."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _name(path).rsplit(".", 1)[0]
    nodes = []
    for node in tree.body if module_level else [tree]:
        # Module level includes imports under if/try at top level, not those inside functions.
        if module_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        nodes.extend(ast.walk(node))
    names = set()
    for n in nodes:
        if isinstance(n, ast.Import):
            names |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - n.level + 1], *([base] if base else [])])
            names |= {f"{base}.{a.name}" if n.level and not n.module else base for a in n.names}
    if module_level:
        # `if TYPE_CHECKING:` imports never run.
        for node in tree.body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                for n in ast.walk(node):
                    if isinstance(n, ast.ImportFrom) and n.level == 1:
                        names.discard(".".join([package, *([n.module] if n.module else [])]))
    return names


def _top(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


def test_the_codec_never_imports_the_federation():
    offenders = [
        _name(p)
        for p in MODULES
        if _name(p).startswith("medcodec.") and "medcodec_fed" in _top(_imports(p, module_level=False))
    ]
    assert offenders == []


TORCH_AT_IMPORT = {
    "medcodec.model.files",
    "medcodec.model.intnet",
    "medcodec.model.network",
    "medcodec.training.train",
    "medcodec.training.export",
    "medcodec_fed.local",
    "medcodec_fed.engine",
    "medcodec_fed.runfolder",
    "medcodec_fed.evaluate",
}
ONLY_IN = {
    "numba": {"medcodec.coding.wavefront"},
    "flwr": {"medcodec_fed.flower.apps"},
    "SimpleITK": {"medcodec.files.images"},
    "zarr": {"medcodec.files.zarr_codec"},
    "numcodecs": {"medcodec.files.zarr_codec"},
}
#: What each part of medcodec (a folder, or a module at the top) may import of the others
#: (docs/ARCHITECTURE.md); the command line and the package's own __init__ may import anything.
SHARED = {"errors", "volume"}
MAY_IMPORT = {
    "errors": set(),
    "volume": {"errors"},
    "format": SHARED,
    "coding": SHARED | {"format"},
    "model": SHARED | {"format", "coding"},
    "codec": SHARED | {"format", "coding", "model"},
    "files": SHARED | {"format", "coding", "model", "codec"},
    "dicom": SHARED | {"format", "coding", "files", "codec"},
    "training": SHARED | {"format", "coding", "model", "files", "codec"},
}


def _part(module: str) -> str:
    """The folder (or top-level module) of a dotted name inside medcodec."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _parts_imported(path: Path) -> set[str]:
    found = set()
    for n in _imports(path, module_level=False):
        if n.split(".")[0] != "medcodec" or n == "medcodec":
            continue
        part = _part(n)
        # `from medcodec import compress` names an attribute of the package: the codec's.
        found.add(part if part in MAY_IMPORT or (SRC / "medcodec" / part).is_dir() else "codec")
    return found


def test_each_part_of_the_codec_imports_only_the_parts_beneath_it():
    offenders = {}
    for p in MODULES:
        name = _name(p)
        if not name.startswith("medcodec.") or _part(name) not in MAY_IMPORT:
            continue
        extra = _parts_imported(p) - MAY_IMPORT[_part(name)] - {_part(name)}
        if extra:
            offenders[name] = sorted(extra)
    assert offenders == {}


def test_every_part_of_the_codec_has_a_rule():
    parts = {_part(_name(p)) for p in MODULES if _name(p).startswith("medcodec.")}
    assert parts - set(MAY_IMPORT) == {"__init__", "__main__", "cli", "batch"}


def test_torch_is_imported_at_module_level_only_where_it_is_the_point():
    loaded = {_name(p) for p in MODULES if "torch" in _top(_imports(p, module_level=True))}
    assert loaded <= TORCH_AT_IMPORT, sorted(loaded - TORCH_AT_IMPORT)


@pytest.mark.parametrize("library", sorted(ONLY_IN))
def test_each_heavy_library_lives_in_its_own_module(library):
    users = {_name(p) for p in MODULES if library in _top(_imports(p, module_level=True))}
    assert users <= ONLY_IN[library], sorted(users - ONLY_IN[library])


def test_pydicom_is_imported_only_inside_the_functions_of_the_dicom_module():
    anywhere = {_name(p) for p in MODULES if "pydicom" in _top(_imports(p, module_level=False))}
    at_import = {_name(p) for p in MODULES if "pydicom" in _top(_imports(p, module_level=True))}
    assert anywhere == {"medcodec.dicom.study"} and at_import == set()


def test_the_package_import_graph_has_no_cycle():
    names = {_name(p): p for p in MODULES}

    def deps(module: str) -> set[str]:
        found = set()
        for n in _imports(names[module], module_level=True):
            while n and n not in names:
                n = n.rpartition(".")[0]
            if n and n != module and not n.endswith("__init__"):
                found.add(n)
        return found

    graph = {m: deps(m) for m in names if not m.endswith("__init__")}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in graph.get(m, ()):
            if state.get(d) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*path, m, d])}")
            if d not in state:
                visit(d, [*path, m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def _private_imports(path: Path, packages: tuple[str, ...]) -> list[str]:
    """``from P.m import _x`` (anywhere in the module) with P one of ``packages``."""
    out = []
    for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(n, ast.ImportFrom) and not n.level and (n.module or "").split(".")[0] in packages:
            out += [f"{n.module}.{a.name}" for a in n.names if a.name.startswith("_") and not a.name.endswith("__")]
    return out


def test_benchmarks_and_the_federation_use_no_private_name_of_the_packages():
    bench = sorted((SRC.parent / "benchmarks").glob("*.py"))
    offenders = {p.name: _private_imports(p, ("medcodec", "medcodec_fed")) for p in bench}
    offenders |= {_name(p): _private_imports(p, ("medcodec",)) for p in MODULES if _name(p).startswith("medcodec_fed")}
    assert {k: v for k, v in offenders.items() if v} == {}
