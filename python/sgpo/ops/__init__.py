"""Public loss ops (DESIGN section 3). Same semantics as :mod:`sgpo.reference`.

Each op runs the Triton kernels of ``sgpo.kernels`` for CUDA tensors (or CPU tensors under ``TRITON_INTERPRET=1``)
and a lean PyTorch path otherwise; ``SGPO_KERNELS=triton|torch`` overrides the choice (see :mod:`sgpo.ops.dispatch`).
"""

from sgpo.ops.fused_linear import fused_linear_sequence_logps, fused_linear_token_logps
from sgpo.ops.logps import sequence_logps
from sgpo.ops.preference import preference_loss, preference_losses
from sgpo.reference import LOSS_TYPES, PreferenceLosses

__all__ = [
    "LOSS_TYPES",
    "PreferenceLosses",
    "fused_linear_sequence_logps",
    "fused_linear_token_logps",
    "preference_loss",
    "preference_losses",
    "sequence_logps",
]
