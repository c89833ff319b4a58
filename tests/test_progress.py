"""The driver's progress: tqdm bars on a terminal, plain lines per stage elsewhere (a log file gets lines,
not redraws)."""
import io
import re

from pipeline.progress import StageProgress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_when_the_output_is_not_a_terminal():
    out = io.StringIO()
    meter = StageProgress(["download", "asr"], total=3, stream=out, every=0.0)
    meter.update(0)
    meter.tick()
    meter.tick()                 # nothing moved: no line
    meter.update(0)
    meter.update(1)
    meter.close()
    lines = out.getvalue().splitlines()
    assert [re.sub(r"^\[\s*[\d.]+s\] ", "", line).split() for line in lines] == \
        [["download", "1/3", "parts"], ["download", "2/3", "parts"], ["asr", "1/3", "parts"]]
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_lines_wait_for_the_interval_and_bars_on_a_terminal():
    out = io.StringIO()
    meter = StageProgress(["download"], total=2, stream=out, every=3600.0)
    meter.update(0)
    meter.tick()
    assert out.getvalue() == ""                  # within the interval
    meter.close()                                # the last state is always printed
    assert out.getvalue().rstrip().endswith("download            1/2 parts")
    tty = Terminal()
    bars = StageProgress(["download"], total=2, stream=tty)
    bars.update(0)
    bars.close()
    assert "1/2" in tty.getvalue() and "\r" in tty.getvalue()      # tqdm's redraws
    off = io.StringIO()
    StageProgress(["download"], total=2, stream=off, enabled=False).close()
    assert off.getvalue() == ""
