"""Session fixtures built by tests/helpers.py, and the thread count: the tests run small models on small inputs,
where a second thread gains nothing and, when another process holds a core, costs several times the run time
(zennit_resnet_lrp.application.threads)."""
import importlib
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from helpers import make_inputs, make_model
from zennit_resnet_lrp.application.threads import choose_threads

torch.set_num_threads(choose_threads(small=True))


def _command_line_from_checkout() -> None:
    """The command line lives in the top-level ``cli/`` folder and installs as ``zennit_resnet_lrp.cli``; in a plain
    checkout (nothing installed, the repository on the path: pyproject's ``pythonpath``) it is loaded from there under
    that name, so that tests/cli collects either way."""
    try:
        importlib.import_module("zennit_resnet_lrp.cli")
        return
    except ModuleNotFoundError:
        pass
    folder = Path(__file__).resolve().parents[1] / "cli"
    spec = importlib.util.spec_from_file_location("zennit_resnet_lrp.cli", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    setattr(importlib.import_module("zennit_resnet_lrp"), "cli", module)


_command_line_from_checkout()


@pytest.fixture(scope="session")
def resnet18():
    return make_model("resnet18")


@pytest.fixture(scope="session")
def inputs():
    return make_inputs()
