"""Errors that name the bad input, so a user can fix the file, row or parameter at once."""

from __future__ import annotations


class MolarError(Exception):
    """Base class of every error molar raises on purpose."""


class DataError(MolarError):
    """Bad input data: names the file and, where known, the 1-based row (line) and column."""

    def __init__(self, file: str, message: str, row: int | None = None, column: str | None = None):
        self.file = str(file)
        self.row = row
        self.column = column
        where = self.file
        if row is not None:
            where += f", row {row}"
        if column is not None:
            where += f", column '{column}'"
        super().__init__(f"{where}: {message}")


class ArtifactError(MolarError):
    """A missing, corrupt or stale artifact: names it and the stage that rebuilds it."""

    def __init__(self, path: str, message: str, rebuild: str | None = None):
        hint = f" (rebuild it with `{rebuild}`)" if rebuild else ""
        super().__init__(f"{path}: {message}{hint}")


class OutputError(MolarError):
    """An output could not be written (disk full, read-only or missing directory): the previous file is intact."""

    def __init__(self, path: str, err: OSError):
        reason = err.strerror or str(err)
        super().__init__(f"{path}: cannot write ({reason}); the previous version, if any, is unchanged")


class TrainingError(MolarError):
    """Training cannot go on (the loss became NaN or infinite): names the epoch, the step and the loss parts."""
