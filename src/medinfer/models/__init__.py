"""Model registry. Importing this package registers the built-in networks."""

from medinfer.models import cells as _cells  # noqa: F401  (registers models)
from medinfer.models import dense_unet as _dense_unet  # noqa: F401  (registers models)
from medinfer.models import detection as _detection  # noqa: F401  (registers models)
from medinfer.models import mcnn as _mcnn  # noqa: F401  (registers models)
from medinfer.models import networks as _networks  # noqa: F401  (registers models)
from medinfer.models.registry import (
    ModelEntry,
    create_model,
    get_entry,
    list_models,
    register_model,
)

__all__ = ["ModelEntry", "create_model", "get_entry", "list_models", "register_model"]
