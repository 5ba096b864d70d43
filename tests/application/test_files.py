"""Output paths: one policy for folders and files (missing folders are made when writing), checked before any work
without creating anything."""
import pytest

from zennit_resnet_lrp.application.files import OutputError, check_output_file, check_output_folder, write_json


def test_a_file_in_a_missing_folder_passes_the_check_and_its_folder_is_made_when_written(tmp_path):
    path = tmp_path / "missing" / "deeper" / "report.json"
    assert check_output_file(path) == path
    assert not (tmp_path / "missing").exists()  # the check creates nothing
    write_json(path, {"a": 1})
    assert path.read_text().strip().startswith("{")


def test_a_path_through_a_file_is_refused(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    for check in (check_output_file, check_output_folder):
        with pytest.raises(OutputError, match=f"{blocker} is a file, not a folder"):
            check(blocker / "sub" / "figure.png")


def test_a_folder_where_a_file_goes_is_refused(tmp_path):
    (tmp_path / "out" / "results.json").mkdir(parents=True)
    with pytest.raises(OutputError, match="results.json: it is a folder; give a file name"):
        check_output_file(tmp_path / "out" / "results.json")
    with pytest.raises(OutputError, match="results.json: it is a folder"):
        check_output_folder(tmp_path / "out", ["results.csv", "results.json"])
    assert check_output_folder(tmp_path / "out", ["results.csv"]) == tmp_path / "out"
