"""xsilo's ground: what every other package may import, and which imports none of them.

* :mod:`xsilo.errors` — the one exception hierarchy;
* :mod:`xsilo.terms` — the typed terms of every coordinator ↔ silo message;
* :mod:`xsilo.protocol` — record names, message types, error codes, the flattening order;
* :mod:`xsilo.records` — named numpy arrays ↔ Flower ``ArrayRecord``;
* :mod:`xsilo.files` — atomic writes and TOML reading;
* :mod:`xsilo.failpoints` — named places where a kill test stops a real process
  (test-only, inert unless ``XSILO_FAILPOINT`` is set).

The architecture lives in ``silo_client``, ``coordinator``, ``strategies`` and ``deploy``;
the ``xsilo`` command, the demo and local federations in ``federation``.
"""

from xsilo.errors import XsiloError

__all__ = ["XsiloError", "__version__"]
__version__ = "0.1.0"
