"""One error type for bad input: its message is a single line naming the file and the field."""


class DckpError(Exception):
    """Bad input or configuration. The CLI prints `error: <message>` and exits with status 2."""

    def __init__(self, message: str, path: str | None = None, field: str | None = None):
        self.message, self.path, self.field = message, path, field
        where = ":".join(str(p) for p in (path, field) if p)
        super().__init__(f"{where}: {message}" if where else message)


class OverBudget(DckpError):
    """A training stopped early, its projected time over its budget: it saved its state, which a larger budget
    resumes."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, after the command saved its state: the message says what was saved (the CLI adds how to resume)."""
