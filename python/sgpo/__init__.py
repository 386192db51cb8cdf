"""sgpo: data-efficient, robust preference alignment (SSAPO, SPPO, the DPO family)."""

from sgpo import ops
from sgpo._version import __version__

__all__ = ["__version__", "ops"]
