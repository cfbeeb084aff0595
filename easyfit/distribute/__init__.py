"""Training on many devices and many hosts: the mesh, the strategies, multi-host start-up.

Examples:
    >>> import easyfit as ef
    >>> model = ef.Model(net, distribution=ef.distribute.FSDP())  # doctest: +SKIP
"""

from easyfit.distribute.hosts import (any_process, barrier, fetch, initialize, is_chief,
                                      is_initialized)
from easyfit.distribute.strategies import (DataParallel, Distribution, FSDP, ModelParallel)

__all__ = ["DataParallel", "Distribution", "FSDP", "ModelParallel", "any_process", "barrier",
           "fetch", "initialize", "is_chief", "is_initialized"]
