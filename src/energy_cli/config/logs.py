"""How the program's lines reach the console and the run's log file (Python `logging`).

Every module logs through `log = logging.getLogger(__name__)`. Inside a run, Hydra configures logging from
conf/hydra/job_logging/energy_ood.yaml: the lines go to stdout as they are, warnings to stderr (starting
with `warning: `), and all of them with time, level and module to `<run folder>/<command>.log`. Outside a
run (planning resume=, the CLI's own notes) `console_logging()` sends them to stdout and stderr alone."""

from __future__ import annotations

import logging
import logging.config
import sys


class ConsoleFormatter(logging.Formatter):
    """The message as it is for INFO; `warning: ` / `error: ` before it for the levels above."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno >= logging.ERROR:
            return f"error: {message}"
        if record.levelno >= logging.WARNING:
            return f"warning: {message}"
        return message


class BelowWarning(logging.Filter):
    """Lets INFO and DEBUG records through (to stdout); warnings and errors go to stderr."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


def console_logging() -> None:
    """The program's INFO lines to stdout, warnings (other libraries' too) to stderr, no log file: the setup
    outside a Hydra run. Replaces (and closes) whatever handlers a previous run left, e.g. its log file."""
    logging.config.dictConfig({
        "version": 1,
        "formatters": {"console": {"()": ConsoleFormatter}},
        "filters": {"below_warning": {"()": BelowWarning}},
        "handlers": {
            "console": {"class": "logging.StreamHandler", "formatter": "console", "stream": sys.stdout,
                        "filters": ["below_warning"]},
            "problems": {"class": "logging.StreamHandler", "formatter": "console", "stream": sys.stderr,
                         "level": "WARNING"},
        },
        "root": {"level": "WARNING", "handlers": ["console", "problems"]},
        "loggers": {"energy_cli": {"level": "INFO"}},
        "disable_existing_loggers": False,
    })


def progress_enabled(value: object, stream=None) -> bool:
    """progress=auto|true|false -> draw progress bars? auto = only when stderr (where tqdm draws) is a
    terminal, so logs and captured output stay free of bar updates."""
    text = str(value).lower()
    if text == "auto":
        stream = sys.stderr if stream is None else stream
        isatty = getattr(stream, "isatty", None)
        return bool(isatty and isatty())
    return text == "true"
