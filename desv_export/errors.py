"""The one exception type that reaches the user as a one-line message.

Anything a user can fix (a missing file, a bad option, an unsupported model) is raised as
``UserError``; the CLI prints ``Error: <message>`` and exits with code 2, no traceback.
Every other exception is a bug and keeps its traceback.
"""

import click


class UserError(click.ClickException):
    exit_code = 2

    def __init__(self, message: str) -> None:
        # One line: the message must name the file or option and say what to do.
        super().__init__(" ".join(str(message).split()))
