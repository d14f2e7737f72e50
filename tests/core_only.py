"""Run a module as after a plain `pip install .`: packages that jaxdist's core dependencies do not bring in
(directly or through their own requirements) are not there.

    python tests/core_only.py jaxdist.main --config=configs/digits_dp.py --workdir=runs/x

The test environment has every extra installed (TensorFlow, sktime, pytest, ...). This hides the others
from every import finder, so `import tensorflow` raises ModuleNotFoundError and importlib.util.find_spec
returns None, as on a machine that never installed them.
"""
import importlib.metadata
import pathlib
import runpy
import sys
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = pathlib.Path(__file__).resolve().parents[1]


def declared(extra: str | None = None) -> list[Requirement]:
    """The core requirements in pyproject.toml, or those of one extra."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    return [Requirement(line) for line in lines]


def installed_closure(requirements: list[Requirement]) -> set[str]:
    """Canonical names of the distributions these requirements bring in, with their extras and markers."""
    seen, queue = set(), [(r.name, frozenset(r.extras)) for r in requirements if _applies(r, frozenset())]
    while queue:
        name, extras = queue.pop()
        key = (canonicalize_name(name), extras)
        if key in seen:
            continue
        seen.add(key)
        if canonicalize_name(name) == "jaxdist":  # a self-reference (jaxdist[ucr]): its extras' lines
            queue += [(r.name, frozenset(r.extras)) for e in extras for r in declared(e) if _applies(r, frozenset())]
            continue
        try:
            requires = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in requires:
            requirement = Requirement(line)
            if _applies(requirement, extras):
                queue.append((requirement.name, frozenset(requirement.extras)))
    return {name for name, _ in seen}


def _applies(requirement: Requirement, extras: frozenset) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": extra}) for extra in ("", *extras))


def hidden_modules(allowed: set[str]) -> set[str]:
    """Top-level modules that only distributions outside `allowed` provide."""
    return {module for module, dists in importlib.metadata.packages_distributions().items()
            if not {canonicalize_name(d) for d in dists} & allowed}


class _Hiding:
    """Wraps one import finder: hidden modules are not found, the rest is asked of the finder."""

    def __init__(self, finder, hidden: set[str]):
        self._finder, self._hidden = finder, hidden

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in self._hidden:
            return None
        find = getattr(self._finder, "find_spec", None)
        return find(fullname, path, target) if find else None

    def __getattr__(self, name):
        return getattr(self._finder, name)


def hide_non_core_packages() -> None:
    hidden = hidden_modules(installed_closure(declared()) | {"jaxdist", "pip", "setuptools"})  # venv seeds pip, setuptools
    sys.meta_path[:] = [_Hiding(finder, hidden) for finder in sys.meta_path]


if __name__ == "__main__":
    hide_non_core_packages()
    module, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
    sys.path.insert(0, str(REPO))
    runpy.run_module(module, run_name="__main__", alter_sys=True)
