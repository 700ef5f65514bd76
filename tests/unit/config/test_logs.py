import io
import logging

from energy_cli.config.logs import BelowWarning, ConsoleFormatter, progress_enabled


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_auto_means_only_on_a_terminal():
    assert progress_enabled("auto", Terminal()) is True
    assert progress_enabled("auto", io.StringIO()) is False        # captured, piped, redirected to a file
    assert progress_enabled(True, io.StringIO()) is True and progress_enabled("true") is True
    assert progress_enabled(False, Terminal()) is False and progress_enabled("false") is False


def record(level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord("energy_cli.x", level, __file__, 1, message, None, None)


def test_console_lines_are_the_message_and_warnings_say_so():
    fmt = ConsoleFormatter()
    assert fmt.format(record(logging.INFO, "epoch   1/2  loss 0.5")) == "epoch   1/2  loss 0.5"
    assert fmt.format(record(logging.WARNING, "cache not written")) == "warning: cache not written"
    assert fmt.format(record(logging.ERROR, "bad")) == "error: bad"
    keep = BelowWarning()
    assert keep.filter(record(logging.INFO, "x")) and not keep.filter(record(logging.WARNING, "x"))
