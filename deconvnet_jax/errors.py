"""User errors and exit codes shared by the command-line tools (README "Reliability").

A `UserError` (bad config, bad input file, unusable checkpoints) is printed as one line on stderr
and the tool exits with `EXIT_USER_ERROR`; `--debug` shows the traceback instead. Anything else is
a bug and keeps its traceback (exit 1).
"""

from __future__ import annotations

import functools
import sys

EXIT_OK = 0
EXIT_BUG = 1  # an unexpected exception (traceback shown)
EXIT_USER_ERROR = 2  # bad config / flags / input / checkpoints: one line on stderr
EXIT_SOME_FILES_FAILED = 3  # predict.py: the batch finished, some files could not be segmented
EXIT_PREEMPTED = 75  # train.py: preempted, checkpoint saved; rerun to resume (sysexits EX_TEMPFAIL)


class UserError(Exception):
    """An error the user can fix (reported in one line, no traceback)."""


class WeightsError(UserError, ValueError):
    """A weights file (.pth, .caffemodel) that cannot be read; the message names the file."""


def _absl_debug() -> bool:
    from absl import flags

    return "debug" in flags.FLAGS and flags.FLAGS.is_parsed() and bool(flags.FLAGS.debug)


def report_user_errors(main, debug=_absl_debug):
    """Wraps an absl/argparse main: `UserError` and `FileNotFoundError` -> one line on stderr and
    exit `EXIT_USER_ERROR`, unless ``debug()`` (default: an absl ``--debug`` flag) is true, when
    the traceback is shown."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except (UserError, FileNotFoundError) as e:
            if debug():
                raise
            text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
            for line in text.strip().splitlines() or [type(e).__name__]:  # one line per problem
                print(f"error: {line.strip()}", file=sys.stderr)
            raise SystemExit(EXIT_USER_ERROR) from None

    return wrapped


def _command_line_error(error: Exception, argv) -> None:
    """One line naming the --config.* overrides the config rejected; exits EXIT_USER_ERROR."""
    args = [a for a in argv[1:] if a.startswith("--config.")]
    name = str(error.args[0] if error.args else error).strip("'\"")
    bad = [a.split("=")[0] for a in args if name and name in a.split("=")[0]] or args
    print(
        f"error: command line rejected: {', '.join(bad)} ({type(error).__name__}: {error})",
        file=sys.stderr,
    )
    raise SystemExit(EXIT_USER_ERROR) from None


def define_config_file(name: str, default, help_string: str, **kwargs):
    """``config_flags.DEFINE_config_file``; with a default config it applies the command line's
    overrides already here, so an unknown field is reported in one line here too."""
    from ml_collections import config_flags

    try:
        return config_flags.DEFINE_config_file(name, default, help_string, **kwargs)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        _command_line_error(e, sys.argv)


def run_app(main, argv=None) -> None:
    """``absl.app.run(report_user_errors(main))``, and a command line that does not parse (e.g.
    ``--config.train.nonexistent=1``: ml_collections raises while absl parses) is one line too."""
    from absl import app, flags

    try:
        app.run(report_user_errors(main), argv=argv)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        if flags.FLAGS.is_parsed():  # raised by main: a bug, keep the traceback
            raise
        _command_line_error(e, argv or sys.argv)
