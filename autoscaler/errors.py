"""Errors that reach the user as one clear line instead of a traceback."""


class InputError(Exception):
    """Bad user input: names the file and the field so it can be fixed without reading code."""

    def __init__(self, source: str, field: str, problem: str):
        self.source = source
        self.field = field
        self.problem = problem
        where = f"{source}: {field}" if field else source
        super().__init__(f"{where}: {problem}")


# statuses worth a retry: conflicts, throttling and the server's transient failures
RETRIED_STATUSES = {409, 429, 500, 502, 503, 504}


class ApiError(Exception):
    """A failed Kubernetes API call, with the HTTP status (0 when the server could not be reached).

    Defined here rather than beside the client so the CLI can report it without importing
    kubernetes_asyncio for commands that never talk to a cluster.
    """

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status

    @property
    def retriable(self) -> bool:
        return self.status == 0 or self.status in RETRIED_STATUSES
