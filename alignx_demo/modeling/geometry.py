"""Geometric calibration parts: natural geometry (Fisher–Rao / Mahalanobis) and fractal geometry
(local intrinsic dimension). Both act on the router features u = P(h − μ), a PCA reduction of the
router's input features, per decoder layer ℓ.

Natural geometry. Class-conditional Gaussians with a shared covariance Σ on u: the Fisher
information metric of that family is the Mahalanobis metric Σ⁻¹, and the posterior is
    log p_geo(k | u) = log_softmax_k( −½ (u − m_k)ᵀ Σ⁻¹ (u − m_k) + log π_k ).
It is combined with the temperature-scaled router output as
    log p ← log_softmax( λ1 · log p + λ2 · log p_geo ).

Fractal geometry. The local intrinsic dimension of u is estimated by the Levina–Bickel MLE on its
k nearest neighbours r_1 ≤ … ≤ r_k in the layer's feature bank:
    LID(u) = [ 1/(k−1) · Σ_{j<k} log(r_k / r_j) ]⁻¹.
Tokens off the axis manifolds (LID, or the distance r_k, well above the bank's median) have their
routing tempered toward uniform:
    τ = 1 + β · max(0, LID/LID_med − 1) + β_d · max(0, r_k/r_med − 1),   log p ← log_softmax(log p / τ).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

from alignx_demo.modeling.calibration import PART_LOADERS, CalibrationPart


def project(features: torch.Tensor, mean: torch.Tensor, components: torch.Tensor) -> torch.Tensor:
    """u = P (h − μ): (…, D) → (…, d) with components (d, D)."""
    return (features.to(mean.dtype) - mean) @ components.T


def levina_bickel_lid(distances: torch.Tensor) -> torch.Tensor:
    """LID from sorted k-NN distances (…, k), k ≥ 2; zero distances are clamped."""
    d = distances.clamp_min(1e-8)
    logs = torch.log(d[..., -1:] / d[..., :-1])  # (…, k−1)
    return 1.0 / logs.mean(dim=-1).clamp_min(1e-8)


def knn_distances(queries: torch.Tensor, bank: torch.Tensor, k: int, exclude_self: bool = False) -> torch.Tensor:
    """Sorted distances (N, k) of each query (N, d) to its k nearest bank points (M, d)."""
    dist = torch.cdist(queries, bank)
    if exclude_self:
        dist = dist + torch.where(dist < 1e-9, torch.full_like(dist, float("inf")), torch.zeros_like(dist))
    return dist.topk(k, dim=-1, largest=False).values


class NaturalGeometry(CalibrationPart):
    """Shared-covariance Gaussian posterior in PCA space, mixed in with weights λ1, λ2."""

    name = "natural"

    def __init__(
        self,
        mean: torch.Tensor,  # (L, D)
        components: torch.Tensor,  # (L, d, D)
        class_means: torch.Tensor,  # (L, K, d)
        precision: torch.Tensor,  # (L, d, d)
        log_prior: torch.Tensor,  # (L, K)
        lambda1: float = 0.6,
        lambda2: float = 0.4,
        enabled: bool = True,
    ) -> None:
        super().__init__(enabled)
        for name, value in (("mean", mean), ("components", components), ("class_means", class_means),
                            ("precision", precision), ("log_prior", log_prior)):
            self.register_buffer(name, value.float().clone())
        self.lambda1, self.lambda2 = float(lambda1), float(lambda2)

    def log_posterior(self, layer: int, features: torch.Tensor) -> torch.Tensor:
        u = project(features, self.mean[layer], self.components[layer])  # (…, d)
        diff = u.unsqueeze(-2) - self.class_means[layer]  # (…, K, d)
        maha = torch.einsum("...kd,de,...ke->...k", diff, self.precision[layer], diff)
        return F.log_softmax(-0.5 * maha + self.log_prior[layer], dim=-1)

    def apply(self, layer: int, logp: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        mixed = self.lambda1 * logp
        if self.lambda2:  # a zero weight leaves the posterior out exactly, so it is not computed
            mixed = mixed + self.lambda2 * self.log_posterior(layer, features).to(logp.dtype)
        return F.log_softmax(mixed, dim=-1)

    def settings(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "lambda1": self.lambda1, "lambda2": self.lambda2}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], settings: dict[str, Any]) -> NaturalGeometry:
        return cls(t["mean"], t["components"], t["class_means"], t["precision"], t["log_prior"], **settings)


class FractalGeometry(CalibrationPart):
    """Tempering toward uniform for tokens whose LID or k-NN distance is high for the bank."""

    name = "fractal"

    def __init__(
        self,
        mean: torch.Tensor,  # (L, D)
        components: torch.Tensor,  # (L, d, D)
        bank: torch.Tensor,  # (L, M, d)
        lid_median: torch.Tensor,  # (L,)
        dist_median: torch.Tensor,  # (L,)
        k: int = 20,
        beta: float = 1.0,
        beta_dist: float = 0.0,
        enabled: bool = True,
    ) -> None:
        super().__init__(enabled)
        for name, value in (("mean", mean), ("components", components), ("bank", bank),
                            ("lid_median", lid_median), ("dist_median", dist_median)):
            self.register_buffer(name, value.float().clone())
        self.k, self.beta, self.beta_dist = int(k), float(beta), float(beta_dist)

    def temperature(self, layer: int, features: torch.Tensor) -> torch.Tensor | float:
        """τ per token (shaped like features[..., 0]). A term whose weight is zero is left out exactly,
        with the LID or the whole neighbour search it would need, so a fitted β = 0 costs nothing."""
        tau: torch.Tensor | float = 1.0
        if not (self.beta or self.beta_dist):
            return tau
        u = project(features, self.mean[layer], self.components[layer])
        dist = knn_distances(u.reshape(-1, u.shape[-1]), self.bank[layer], self.k)
        shape = u.shape[:-1]
        if self.beta:
            tau = tau + self.beta * (levina_bickel_lid(dist).reshape(shape) / self.lid_median[layer] - 1).clamp_min(0)
        if self.beta_dist:
            tau = tau + self.beta_dist * (dist[:, -1].reshape(shape) / self.dist_median[layer] - 1).clamp_min(0)
        return tau

    def apply(self, layer: int, logp: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        tau = self.temperature(layer, features)
        return F.log_softmax(logp / (tau.unsqueeze(-1) if isinstance(tau, torch.Tensor) else tau), dim=-1)

    def settings(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "k": self.k, "beta": self.beta, "beta_dist": self.beta_dist}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], settings: dict[str, Any]) -> FractalGeometry:
        return cls(t["mean"], t["components"], t["bank"], t["lid_median"], t["dist_median"], **settings)


PART_LOADERS.update({NaturalGeometry.name: NaturalGeometry, FractalGeometry.name: FractalGeometry})
