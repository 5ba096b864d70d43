"""resnet-lrp check --plot: the figure's file checked before any work (its folder made when missing), the figure
titled with the model and method."""
import pytest
from click.testing import CliRunner

from zennit_resnet_lrp.cli.main import cli

pytest.importorskip("matplotlib")


def check(*args):
    return CliRunner().invoke(cli, ["check", *[str(a) for a in args]], catch_exceptions=False)


def _refuse_loading(monkeypatch):
    from zennit_resnet_lrp.cli.options import RunOptions

    def load(self):
        raise AssertionError("loaded the model before refusing")

    monkeypatch.setattr(RunOptions, "load", load)


def test_check_plot_into_a_missing_folder_makes_the_folder_and_writes_the_figure(tmp_path):
    path = tmp_path / "missing" / "dir" / "fig5.png"
    result = check("--random", 2, "--plot", path)
    assert result.exit_code == 0, result.output
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_check_plot_is_titled_with_the_model_and_the_method(tmp_path, monkeypatch):
    from zennit_resnet_lrp.application import plots

    titles = []
    monkeypatch.setattr(plots, "conservation_plot", lambda report, path, subject="": titles.append(subject))
    result = check("--random", 2, "--plot", tmp_path / "fig5.png")
    assert result.exit_code == 0, result.output
    assert titles == ["demo-mnist, flows_skip_conservative"]


@pytest.mark.parametrize("name, fragment", [("afile/fig5.png", "afile is a file, not a folder"),
                                            ("fig5.xyz", "'.xyz' is not an image format matplotlib writes")])
def test_check_plot_to_a_path_it_cannot_write_is_refused_before_the_model_loads(tmp_path, monkeypatch, name,
                                                                              fragment):
    _refuse_loading(monkeypatch)
    (tmp_path / "afile").write_text("")
    result = check("--plot", tmp_path / name)
    assert result.exit_code == 2, result.output
    assert fragment in result.output and "loaded the model" not in result.output
