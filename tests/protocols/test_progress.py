"""Pure tier: the driver's progress report in a log file (a SLURM log: stderr is not a terminal)."""

import io

from mpisim.protocols import driver


def test_progress_lines_come_every_five_percent_name_the_rank_and_have_no_carriage_returns():
    out = io.StringIO()
    bar = driver.ProgressLines(200, "round", stream=out)
    for t in range(1, 201):
        if t == 100:
            bar.set_postfix({"accuracy": "0.9"})
        bar.update(1)
    lines = out.getvalue().splitlines()

    assert "\r" not in out.getvalue()
    assert len(lines) == 20 and all(line.startswith("[rank 0] round ") for line in lines)
    assert lines[0].startswith("[rank 0] round 10/200 (5%)") and lines[-1].startswith("[rank 0] round 200/200 (100%)")
    assert "accuracy 0.9" in lines[-1] and "accuracy" not in lines[0]


def test_a_resumed_run_reports_from_where_it_goes_on():
    out = io.StringIO()
    bar = driver.ProgressLines(7, "iteration", initial=3, stream=out)
    for _ in range(4):
        bar.update(1)
    lines = out.getvalue().splitlines()
    assert [line.split()[3] for line in lines] == ["4/7", "5/7", "6/7", "7/7"]


def test_say_names_the_rank_only_in_a_log_file():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    log, tty = io.StringIO(), Terminal()
    driver.say("final test accuracy 97%", log)
    driver.say("final test accuracy 97%", tty)
    assert log.getvalue() == "[rank 0] final test accuracy 97%\n"
    assert tty.getvalue() == "final test accuracy 97%\n"
