"""Data errors; each message names the file, the row and the field."""


class DataError(ValueError):
    """Data that cannot be used as configured."""


class BadRow(DataError):
    """One row with a missing, empty or wrong-typed field: `<file> row <n>: field '<f>' is …`."""
