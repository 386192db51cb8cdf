"""sgpo inside other trainers.

- :mod:`sgpo.integrations.trl`: ``SGPODPOTrainer``/``SGPODPOConfig``, every sgpo loss type (``ssapo`` and ``sppo``
  included) in TRL's ``DPOTrainer``. Needs ``pip install 'sgpo[trl]'``; imported on demand so sgpo works without TRL.

A plain ``transformers.Trainer`` needs no integration: call :class:`sgpo.nn.FusedLinearPreferenceLoss` or
:func:`sgpo.ops.preference_loss` from ``compute_loss`` (see ``examples/hf_trainer.py``).
"""
