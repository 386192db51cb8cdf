"""sgpo: data-efficient, robust preference alignment (SSAPO, SPPO, the DPO family)."""

from sgpo import ops
from sgpo._version import __version__
from sgpo.follower import WorstCase, worst_case

__all__ = ["__version__", "ops", "WorstCase", "worst_case"]
