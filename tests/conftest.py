"""Session fixtures built by tests/helpers.py, and the thread count: the tests run small models on small inputs,
where a second thread gains nothing and, when another process holds a core, costs several times the run time
(zennit_resnet_lrp.application.threads)."""
import pytest
import torch

from helpers import make_inputs, make_model
from zennit_resnet_lrp.application.threads import choose_threads

torch.set_num_threads(choose_threads(small=True))


@pytest.fixture(scope="session")
def resnet18():
    return make_model("resnet18")


@pytest.fixture(scope="session")
def inputs():
    return make_inputs()
