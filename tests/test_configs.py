"""Every shipped config passes the same checks the CLI runs before touching devices."""
import importlib.util

import pytest

from jaxdist.cli import validate
from tests.conftest import REPO

CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_config_validates(name):
    spec = importlib.util.spec_from_file_location(name[:-3], REPO / "configs" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    validate(module.get_config())
