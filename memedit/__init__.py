"""memedit: a durable, namespaced memory of knowledge edits for language models."""

from .edit import Edit
from .errors import ConflictError, EditError, EditNotFound, ImportFailed, MemeditError, ModelPackageError, StoreOpenError
from .chat import ChatSession
from .edited_model import EditedModel
from .memory import Hit, Memory
from .models import LanguageModel, load_model
from .store import Event, StoredEdit


class _WeightEditors:
    """``memedit.param_editors``, imported on first use (it loads torch): what
    ``Memory.consolidate``, ``revert`` and ``apply_consolidated`` call."""

    def __getattr__(self, name: str):
        from . import param_editors

        return getattr(param_editors, name)


Memory.weight_editors = _WeightEditors()

__version__ = "0.1.0"
__all__ = ["Edit", "EditedModel", "ChatSession", "LanguageModel", "load_model", "StoredEdit", "Memory", "Hit", "Event", "MemeditError", "EditError", "EditNotFound",
           "ConflictError", "ImportFailed", "ModelPackageError", "StoreOpenError", "__version__"]
