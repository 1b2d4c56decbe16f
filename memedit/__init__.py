"""memedit: a durable, namespaced memory of knowledge edits for language models."""

from .edit import Edit
from .errors import ConflictError, EditError, EditNotFound, ImportFailed, MemeditError, ModelPackageError, StoreOpenError
from .memory import Hit, Memory
from .store import Event, StoredEdit

__version__ = "0.1.0"
__all__ = ["Edit", "StoredEdit", "Memory", "Hit", "Event", "MemeditError", "EditError", "EditNotFound",
           "ConflictError", "ImportFailed", "ModelPackageError", "StoreOpenError", "__version__"]
