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


def read_user_json(path, missing: str):
    """Parse a JSON file the user pointed us at: absent or malformed is a one-line UserError.

    ``missing`` says what to do when the file does not exist.
    """
    import json
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found; {missing}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f"{e.msg} at line {e.lineno}" if isinstance(e, json.JSONDecodeError) else "not UTF-8"
        raise UserError(f"{path} is not valid JSON ({where})") from None
