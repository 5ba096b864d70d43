"""The evaluation table: every method the rows hold, in the order asked for, means and std per method."""
import pytest

from zennit_resnet_lrp.evaluation.summary import format_markdown, summarize


def row(method, image, insertion, deletion, model="m"):
    return {"model": model, "image": image, "method": method, "insertion": insertion, "deletion": deletion,
            "id": insertion - deletion}


def test_the_table_never_leaves_out_a_method_the_rows_hold():
    rows = [row("a", "0", 0.8, 0.2), row("b", "0", 0.6, 0.4), row("c", "0", 0.5, 0.5), row("b", "1", 0.4, 0.2)]
    table = summarize(rows, ["b"])
    assert [entry["method"] for entry in table] == ["b", "a", "c"]  # the asked-for order first, then the others
    assert table[0]["images"] == 2 and table[0]["insertion"] == pytest.approx(0.5)
    assert table[0]["insertion_std"] == pytest.approx(0.1)
    assert all(f"| {name} |" in format_markdown(table) for name in "abc")
