"""The package's layers: imports point down only (README, "Layout"). Every import in hpc_dl, at module
level or inside a function, is checked against this order; an upward import fails here."""

import ast

from tests.conftest import ROOT

# Highest first. A package may import itself and anything below it.
LAYERS = ["cli", "api", "course", "bench", "launch", "training", "checkpoint", "distributed", "telemetry", "models",
          "data", "config", "fileio", "errors"]  # fmt: skip
PACKAGE = ROOT / "hpc_dl"


def _imports(path):
    """(line, imported hpc_dl module) for every import of ``path``."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("hpc_dl"):
            for alias in node.names:
                yield node.lineno, node.module if node.module != "hpc_dl" else f"hpc_dl.{alias.name}"
        elif isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names if a.name.startswith("hpc_dl."))


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_module_belongs_to_a_layer():
    unplaced = [p.relative_to(ROOT) for p in PACKAGE.rglob("*.py")
                if p.parent == PACKAGE and p.stem not in LAYERS and p.stem not in ("__init__", "__main__")
                or p.parent != PACKAGE and p.relative_to(PACKAGE).parts[0] not in LAYERS]  # fmt: skip
    assert not unplaced, f"add these to LAYERS (and the README's layout): {unplaced}"


def test_imports_point_down():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _layer("hpc_dl." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        for line, module in _imports(path):
            target = _layer(module)
            if source and target and LAYERS.index(target) < LAYERS.index(source):
                upward.append(f"{path.relative_to(ROOT)}:{line} ({source}) imports {module} ({target})")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path):
    """The rule itself: a module of a lower layer importing a higher one is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from hpc_dl.training.run import train\n")
    assert [(line, m) for line, m in _imports(bad)] == [(2, "hpc_dl.training.run")]
    assert LAYERS.index(_layer("hpc_dl.training.run")) < LAYERS.index(_layer("hpc_dl.models.mlp"))
