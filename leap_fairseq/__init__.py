"""leap_fairseq: LeaP linear attention for fairseq, offline and streaming.

Load it into fairseq with ``--user-dir path/to/leap_fairseq`` or with
``import leap_fairseq``. Both apply the stack workarounds in
:mod:`leap_fairseq.compat` first and then import the modules that register
fairseq models, tasks and criterions. Python caches the import, so importing
twice registers nothing twice.
"""

from leap_fairseq import compat as _compat

with _compat.keep_root_logging():
    _compat.apply_all()

    # Registration happens as a side effect of these imports, so they come
    # after the patches above.
    from leap_fairseq import models  # noqa: E402,F401

__version__ = "0.1.0"
