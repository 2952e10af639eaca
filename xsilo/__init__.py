"""xsilo: cross-silo federated learning on Flower.

The top-level package is deliberately tiny: the CLI root and the shared error base.
The architecture lives in ``silo_client``, ``coordinator``, ``strategies`` and ``deploy``.
"""

from xsilo.errors import XsiloError

__all__ = ["XsiloError", "__version__"]
__version__ = "0.1.0"
