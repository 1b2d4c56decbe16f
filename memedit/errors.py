"""The errors memedit raises. Each message names the field or the edit, and the fix."""

from __future__ import annotations


class MemeditError(Exception):
    """Base class of every error memedit raises on purpose."""


class EditError(MemeditError, ValueError):
    """An edit descriptor is invalid. ``field`` names the offending field."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"Edit.{field}: {message}")


class EditNotFound(MemeditError, LookupError):
    """No edit with this id exists in this namespace."""

    def __init__(self, edit_id: str, namespace: str):
        self.edit_id = edit_id
        self.namespace = namespace
        super().__init__(
            f"no edit with id {edit_id!r} in namespace {namespace!r}; "
            f"run `memedit list` (or Memory.list()) in that namespace to see its ids"
        )

    def __str__(self) -> str:  # LookupError would quote the whole message
        return self.args[0]


class ConflictError(MemeditError, ValueError):
    """A write contradicts what is stored (duplicate id, edit already retracted...)."""


class ArgumentError(MemeditError, ValueError, TypeError):
    """An argument of a memedit call has a bad value or type; ``name`` names it.

    Both a ValueError and a TypeError, so code that caught either before keeps working."""

    def __init__(self, name: str, message: str):
        self.name = name
        super().__init__(f"{name} {message}")


class StoreOpenError(MemeditError, OSError):
    """The database file cannot be opened as a memedit store."""


class StoreReadOnly(StoreOpenError):
    """The database (or its folder, where SQLite keeps its -wal and -shm files) cannot be written."""


class StoreDamaged(StoreOpenError):
    """SQLite reports the database file damaged (malformed pages, not a database, an I/O error)."""


class StoreUnreachable(StoreOpenError):
    """The database server cannot be reached (wrong host or port, server down, login refused)."""


class ExtensionMissing(StoreOpenError):
    """The PostgreSQL database lacks the pgvector extension and this user may not create it."""


class ArtifactsDirMissing(MemeditError, ValueError):
    """A PostgreSQL memory needs a folder for its artifact files and none was given."""


class SchemaTooNew(ConflictError):
    """The database was written by a newer memedit (a higher schema version)."""


class ImportFailed(MemeditError, ValueError):
    """A JSONL import had bad lines; nothing was imported.

    ``errors`` is a list of ``(line_number, message)`` pairs, line numbers from 1.
    """

    def __init__(self, source: str, errors: list[tuple[int, str]]):
        self.source = source
        self.errors = errors
        shown = "\n".join(f"  line {n}: {msg}" for n, msg in errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        super().__init__(
            f"{source}: {len(errors)} bad line(s); nothing was imported. "
            f"Fix these lines and import again:\n{shown}{more}"
        )


class ModelPackageError(MemeditError, RuntimeError):
    """A packaged model is missing or its files do not match their checksum."""
