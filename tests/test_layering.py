"""Dependencies run one way. Adapters import the core, never the reverse: only the
application layer (CLI, demo) names bioviz.adapters. Inside the core a stage imports the
stages before it in the flow (store → extract → sae → features → evaluate → analysis), never after."""

import ast
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "bioviz"
APPLICATION = {"cli", "demo", "run"}
# rank in the flow of artifacts; a module may import modules of equal or lower rank
RANK = {"version": 0, "errors": 0, "lock": 0, "checksum": 0, "hooks": 0, "tables": 0, "batches": 0, "trainer": 0,
        "adapter": 1, "store": 2, "extract": 3, "sae": 4, "provenance": 5, "features": 5,
        "evaluate": 6, "analysis": 7, "interpret": 8, "report": 9}


def _imports(path: Path) -> list[str]:
    """Absolute names of the bioviz modules ``path`` imports (relative imports resolved)."""
    rel = path.relative_to(CORE.parent).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                out += [mod] if node.module else [f"{mod}.{a.name}" for a in node.names]
            else:
                out.append(node.module)
    return [m for m in out if m == "bioviz" or m.startswith("bioviz.")]


def _core_files():
    return [p for p in CORE.rglob("*.py") if p.relative_to(CORE).parts[0].removesuffix(".py") not in APPLICATION]


def test_importing_the_core_loads_no_adapter():
    stages = ["bioviz", "bioviz.adapter", "bioviz.hooks", "bioviz.store", "bioviz.extract",
              "bioviz.sae", "bioviz.sae.train", "bioviz.sae.data", "bioviz.features", "bioviz.evaluate",
              "bioviz.provenance", "bioviz.batches", "bioviz.checksum", "bioviz.analysis.associate"]
    code = (f"import importlib, sys\nfor m in {stages!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m.startswith('bioviz.adapters')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_only_the_application_layer_names_the_adapters():
    offenders = {str(p.relative_to(CORE)): m for p in _core_files() for m in _imports(p)
                 if m == "bioviz.adapters" or m.startswith("bioviz.adapters.")}
    assert offenders == {}
    # and the check sees imports at all (relative ones resolved): the report imports the analysis
    assert any(m.startswith("bioviz.analysis") for m in _imports(CORE / "report" / "compose.py"))


def test_core_stages_import_only_earlier_stages():
    wrong = []
    for path in _core_files():
        top = path.relative_to(CORE).parts[0].removesuffix(".py")
        if top == "__init__":
            continue
        assert top in RANK, f"bioviz/{top}: give it a place in the flow (RANK in this test)"
        for m in _imports(path):
            parts = m.split(".")
            if len(parts) < 2 or parts[1] in ("adapters",):
                continue
            dep = parts[1]
            if dep in RANK and RANK[dep] > RANK[top]:
                wrong.append(f"{path.relative_to(CORE)} imports {m}")
            if m == "bioviz":
                wrong.append(f"{path.relative_to(CORE)} imports the package root (upward)")
    assert wrong == []
