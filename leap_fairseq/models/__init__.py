"""Registered fairseq architectures.

Every module in this package is imported here so that its ``@register_model``
and ``@register_model_architecture`` decorators run when leap_fairseq loads.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
