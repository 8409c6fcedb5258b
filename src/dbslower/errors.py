"""Typed errors. Each carries a hint for the user and the exit code to use.

Library code raises these; only cli.py prints them and exits.
"""


class DbslowerError(Exception):
    exit_code = 1
    hint = ""

    def __init__(self, message, hint=None):
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    def line(self):
        msg = str(self)
        return f"{msg} ({self.hint})" if self.hint else msg


class UsageError(DbslowerError):
    exit_code = 2


class NotRoot(DbslowerError):
    exit_code = 3
    hint = "see contrib/dbslower.service for the capabilities and why each is needed"


class NoBPF(DbslowerError):
    exit_code = 4
    hint = "dbslower needs a kernel with BPF and uprobes (CONFIG_BPF_SYSCALL, CONFIG_UPROBE_EVENTS) and tracefs mounted"


class NoHeaders(DbslowerError):
    exit_code = 5
    hint = ("install them with 'apt-get install linux-headers-$(uname -r)', or run "
            "'make setup', which links linux-headers-amd64 when no exact match exists")


class NoServer(DbslowerError):
    exit_code = 6


class NotAServer(DbslowerError):
    exit_code = 7


class NoProbes(DbslowerError):
    exit_code = 8


class AttachFailed(DbslowerError):
    exit_code = 9


class ListenFailed(DbslowerError):
    exit_code = 10


class PreflightFailed(DbslowerError):
    """Several problems found at once; `problems` holds each of them."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems))
        self.exit_code = self.problems[0].exit_code
