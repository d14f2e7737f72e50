"""What `pip install .` brings is what jaxdist imports: every third-party import is a declared core
dependency, or sits on an optional path that ends in one line saying which extra to install."""
import ast
import functools
import importlib.metadata
import re
import sys

from packaging.utils import canonicalize_name

from tests.conftest import REPO
from tests.core_only import declared, installed_closure
from tests.helpers import run_cli

_IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError"}
_EXTRA = re.compile(r"pip install .*?\.\[([\w,-]+)\]")


@functools.cache
def _module_distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _distributions(module: str) -> set[str]:
    return {canonicalize_name(d) for d in _module_distributions().get(module, [])}


def _extras_named_by_guard(parents: list[ast.AST], node: ast.AST) -> list[str] | None:
    """The extras an enclosing `try: import X / except ImportError: raise ...("pip install '.[extra]'")`
    names, or None if the import is not guarded that way."""
    for parent in reversed(parents):
        if not isinstance(parent, ast.Try) or not any(node is n for stmt in parent.body for n in ast.walk(stmt)):
            continue
        for handler in parent.handlers:
            caught = {n.id for n in ast.walk(handler.type) if isinstance(n, ast.Name)} if handler.type else set()
            raises = any(isinstance(n, ast.Raise) for n in ast.walk(handler))
            extras = _EXTRA.search(ast.unparse(handler))
            if caught & _IMPORT_ERRORS and raises and extras:
                return extras.group(1).split(",")
    return None


def undeclared_imports(source: str, filename: str) -> list[str]:
    """One line per import of a third-party package that neither the core dependencies nor the named
    extra of its guard declares."""
    core = {canonicalize_name(r.name) for r in declared()}
    problems = []

    def visit(node, parents):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and not getattr(node, "level", 0):
            for name in [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]:
                top = name.partition(".")[0]
                dists = _distributions(top)
                if top in sys.stdlib_module_names or not dists or "jaxdist" in dists or dists & core:
                    continue
                extras = _extras_named_by_guard(parents, node)
                if extras is None:
                    problems.append(f"{filename}:{node.lineno} imports {top} ({', '.join(sorted(dists))}), which "
                                    "the core dependencies do not declare, outside a try/except ImportError that "
                                    "raises 'pip install ...[extra]'")
                elif not dists & installed_closure(declared(extras[0])):
                    problems.append(f"{filename}:{node.lineno} imports {top} but its guard names the extra "
                                    f"[{extras[0]}], which does not install {', '.join(sorted(dists))}")
        for child in ast.iter_child_nodes(node):
            visit(child, [*parents, node])

    visit(ast.parse(source), [])
    return problems


def test_every_third_party_import_is_core_or_a_guarded_extra():
    problems = []
    for path in sorted((REPO / "jaxdist").rglob("*.py")):
        problems += undeclared_imports(path.read_text(), str(path.relative_to(REPO)))
    assert problems == []


def test_the_check_catches_an_unguarded_or_misnamed_optional_import():
    """The checker itself: an optional package imported at module level, or guarded by a message that
    names an extra which does not install it, is reported; the right guard passes."""
    guarded = ("try:\n    import sktime\nexcept ImportError:\n"
               "    raise ConfigError(\"needs sktime: pip install -e '.[{extra}]'\") from None\n")
    assert len(undeclared_imports("import sktime\n", "m.py")) == 1
    assert len(undeclared_imports("from PIL import Image\nimport tensorflow as tf\n", "m.py")) == 1
    assert "does not install sktime" in undeclared_imports(guarded.format(extra="prepare"), "m.py")[0]
    assert undeclared_imports(guarded.format(extra="ucr"), "m.py") == []
    swallowed = "try:\n    import sktime\nexcept ImportError:\n    names = []\n"
    assert len(undeclared_imports(swallowed, "m.py")) == 1


def test_core_only_runs_hide_the_extras(cli_env, tmp_path):
    """tests/core_only.py (which the default-run and raw-data CLI tests use) really removes the extras:
    the optional paths then end in their one-line install instruction."""
    result = run_cli(cli_env, "--config=configs/ucr_vowels_lstm.py", f"--workdir={tmp_path}", core_only=True)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == \
        "jaxdist: error: data.name='ucr' needs sktime, which bundles the data sets: pip install -e '.[ucr]'"
    result = run_cli(cli_env, "cifar10", module="jaxdist.data.prepare", core_only=True)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert "needs tensorflow and importlib_resources" in lines[0] and "pip install -e '.[prepare]'" in lines[0]
