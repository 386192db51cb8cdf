"""Reference-free pair losses with Liger-Kernel's classes' constructor arguments, call and auxiliary outputs:
:class:`FusedLinearSimPOLoss` (SimPO, arXiv 2405.14734), :class:`FusedLinearCPOLoss` (CPO, arXiv 2401.08417) and
:class:`FusedLinearORPOLoss` (ORPO, arXiv 2403.07691). Each loss is ``alpha * NLL(chosen) + mean over pairs of the
pair loss`` (ORPO's alpha is 1), the NLL per counted chosen token as Liger computes it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sgpo.loss_args import check_label_smoothing
from sgpo.nn_policy import PolicyLogps, chosen_nll, liger_aux, policy_logps
from sgpo.ops import preference_losses
from sgpo.reference import orpo_log_odds


class _ReferenceFreeLoss(torch.nn.Module):
    loss_type: str
    average_log_prob: bool

    def _forward(
        self,
        lin_weight: torch.Tensor,
        _input: torch.Tensor,
        target: torch.Tensor,
        bias: torch.Tensor | None,
        nll_target: torch.Tensor | None = None,
        **options: float,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], PolicyLogps]:
        policy = policy_logps(
            lin_weight,
            _input,
            target,
            bias,
            ignore_index=self.ignore_index,
            average_log_prob=self.average_log_prob,
            chunk_tokens=self.chunk_tokens,
        )
        out = preference_losses(policy.chosen, policy.rejected, loss_type=self.loss_type, beta=self.beta, **options)
        nll = chosen_nll(
            policy,
            lin_weight,
            _input,
            bias,
            ignore_index=self.ignore_index,
            chunk_tokens=self.chunk_tokens,
            nll_target=nll_target,
        )
        if not self.compute_nll_loss:
            nll = torch.zeros_like(nll.detach())
        loss = self.alpha * nll + out.losses.mean()
        aux = liger_aux(policy, lin_weight, _input, bias, nll, out.chosen_rewards, out.rejected_rewards)
        return loss, aux, policy


class FusedLinearSimPOLoss(_ReferenceFreeLoss):
    """Drop-in for ``LigerFusedLinearSimPOLoss``: -log sigmoid(beta * (mean log p(y_w) - mean log p(y_l)) - gamma),
    with conservative ``label_smoothing``; the log-probs are per-token means, as in the paper.

    ``compiled`` and ``chunk_size`` are accepted for Liger's signature and change nothing; ``chunk_tokens`` bounds the
    tokens projected at a time.
    """

    loss_type = "simpo"
    average_log_prob = True

    def __init__(
        self,
        ignore_index: int = -100,
        beta: float = 0.1,
        alpha: float = 1.0,
        label_smoothing: float = 0.0,
        compute_nll_loss: bool = True,
        compiled: bool = True,
        gamma: float = 0.5,
        chunk_size: int = 1,
        *,
        chunk_tokens: int | None = None,
    ) -> None:
        super().__init__()
        check_label_smoothing("simpo", label_smoothing)
        self.ignore_index, self.beta, self.alpha, self.label_smoothing = ignore_index, beta, alpha, label_smoothing
        self.compute_nll_loss, self.gamma, self.chunk_tokens = compute_nll_loss, gamma, chunk_tokens

    def forward(
        self, lin_weight: torch.Tensor, _input: torch.Tensor, target: torch.Tensor, bias: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        loss, aux, _ = self._forward(
            lin_weight, _input, target, bias, label_smoothing=self.label_smoothing, simpo_gamma=self.gamma
        )
        return loss, aux


class FusedLinearCPOLoss(_ReferenceFreeLoss):
    """Drop-in for ``LigerFusedLinearCPOLoss``: -log sigmoid(beta * (log p(y_w) - log p(y_l))) with conservative
    ``label_smoothing``, summed log-probs unless ``average_log_prob``.

    ``compiled`` and ``chunk_size`` are accepted for Liger's signature and change nothing.
    """

    loss_type = "cpo"

    def __init__(
        self,
        ignore_index: int = -100,
        beta: float = 0.1,
        alpha: float = 1.0,
        label_smoothing: float = 0.0,
        compute_nll_loss: bool = True,
        compiled: bool = True,
        average_log_prob: bool = False,
        chunk_size: int = 1,
        *,
        chunk_tokens: int | None = None,
    ) -> None:
        super().__init__()
        check_label_smoothing("cpo", label_smoothing)
        self.ignore_index, self.beta, self.alpha, self.label_smoothing = ignore_index, beta, alpha, label_smoothing
        self.compute_nll_loss, self.average_log_prob = compute_nll_loss, average_log_prob
        self.chunk_tokens = chunk_tokens

    def forward(
        self, lin_weight: torch.Tensor, _input: torch.Tensor, target: torch.Tensor, bias: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        loss, aux, _ = self._forward(lin_weight, _input, target, bias, label_smoothing=self.label_smoothing)
        return loss, aux


class FusedLinearORPOLoss(_ReferenceFreeLoss):
    """Drop-in for ``LigerFusedLinearORPOLoss``: NLL(chosen) - beta * log sigmoid(log odds ratio) of the per-token
    mean log-probs; ``aux`` ends with Liger's mean log sigmoid(log odds ratio) and mean log odds ratio.

    ``nll_target`` (forward) takes the NLL's targets from another tensor, as Liger does. ``compiled`` and
    ``chunk_size`` are accepted for Liger's signature and change nothing.
    """

    loss_type = "orpo"
    average_log_prob = True
    alpha = 1.0

    def __init__(
        self,
        ignore_index: int = -100,
        beta: float = 0.1,
        compute_nll_loss: bool = True,
        compiled: bool = True,
        chunk_size: int = 1,
        *,
        chunk_tokens: int | None = None,
    ) -> None:
        super().__init__()
        self.ignore_index, self.beta = ignore_index, beta
        self.compute_nll_loss, self.chunk_tokens = compute_nll_loss, chunk_tokens

    def forward(
        self,
        lin_weight: torch.Tensor,
        _input: torch.Tensor,
        target: torch.Tensor,
        bias: torch.Tensor | None = None,
        nll_target: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        loss, aux, policy = self._forward(lin_weight, _input, target, bias, nll_target)
        with torch.no_grad():
            log_odds = orpo_log_odds(policy.chosen.float(), policy.rejected.float())
            extra = (F.logsigmoid(log_odds).mean(), log_odds.mean())
        return loss, (*aux, *extra)
