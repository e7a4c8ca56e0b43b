"""Errors that reach the user as one clear line instead of a traceback."""


class InputError(Exception):
    """Bad user input: names the file and the field so it can be fixed without reading code."""

    def __init__(self, source: str, field: str, problem: str):
        self.source = source
        self.field = field
        self.problem = problem
        where = f"{source}: {field}" if field else source
        super().__init__(f"{where}: {problem}")
