"""A torchvision that does not fit the installed torch is one line naming both versions and the fix."""
import os
import shutil
import subprocess
import sys

import pytest


@pytest.fixture
def broken_torchvision(tmp_path):
    """An environment whose torchvision fails to import as one built for another torch does."""
    package = tmp_path / "torchvision"
    package.mkdir()
    (package / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    return {**os.environ, "PYTHONPATH": str(tmp_path)}


def test_command_line_says_it_in_one_line(broken_torchvision):
    command = shutil.which("resnet-lrp")
    if command is None:
        pytest.skip("the package is not installed")
    done = subprocess.run([command, "--version"], capture_output=True, text=True, env=broken_torchvision, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    line, = done.stderr.splitlines()
    assert line.startswith("error: torchvision ") and " does not fit torch " in line
    assert "operator torchvision::nms does not exist" in line and "pip install --force-reinstall torch==" in line


def test_import_raises_import_error_naming_both_versions(broken_torchvision):
    done = subprocess.run([sys.executable, "-c", "import zennit_resnet_lrp"], capture_output=True, text=True,
                          env=broken_torchvision, timeout=120)
    assert done.returncode == 1
    assert "ImportError: torchvision " in done.stderr and "does not fit torch " in done.stderr
