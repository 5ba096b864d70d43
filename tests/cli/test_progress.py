"""Progress lines: done/total, rate and time left on a terminal; nothing at all elsewhere."""
import io

from zennit_resnet_lrp.cli.progress import Progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_on_a_terminal_counts_rate_and_time_left():
    clock = iter([0.0, 2.0, 4.0, 4.0])
    stream = Terminal()
    with Progress(4, "explaining", stream, clock=lambda: next(clock)) as progress:
        progress.update(1)
        progress.update(1)
    lines = stream.getvalue().split("\r")
    assert "explaining 1/4" in lines[1] and "0.5/s" in lines[1] and "6s left" in lines[1]
    assert "explaining 2/4" in lines[2] and "4s left" in lines[2]
    assert stream.getvalue().endswith("\n")


def test_progress_elsewhere_writes_nothing():
    stream = io.StringIO()
    with Progress(4, "explaining", stream) as progress:
        progress.update(4)
    assert stream.getvalue() == ""
