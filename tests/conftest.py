"""Session fixtures built by tests/helpers.py."""
import pytest

from helpers import make_inputs, make_model


@pytest.fixture(scope="session")
def resnet18():
    return make_model("resnet18")


@pytest.fixture(scope="session")
def inputs():
    return make_inputs()
