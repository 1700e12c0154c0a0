"""The error every input check raises: its message is the one line the CLI prints."""


class ScanInputError(ValueError):
    """An input bdscan cannot scan; the message says what is wrong and what to do."""
