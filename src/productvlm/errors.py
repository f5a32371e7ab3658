"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class ProductVLMError(ValueError):
    """A problem the user can fix: bad input, a missing file, a wrong flag.

    The message must name the file, row or field and say what to do, e.g.
    ``ProductVLMError("catalog.csv: column 'title' is missing; present: name, price")``.
    It subclasses ValueError so library callers can catch either.
    """
