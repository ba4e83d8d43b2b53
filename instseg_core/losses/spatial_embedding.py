"""The Spatial Embeddings loss (Neven et al., CVPR 2019, Eqs. 5, 7-10, 12).

Per image and instance S_k:
    C_k     = mean coordinate of S_k (centroid) or mean embedding of S_k (learnable centre of attraction, Eq. 9)
    s_k     = mean sigma raw value over S_k (Eq. 7); bandwidth b_k = exp(10 s_k) = 1 / (2 sigma_k^2)
              (or a fixed bandwidth for the 'fixed sigma' ablation)
    phi_k   = exp(-sum_d (e_d - C_kd)^2 * b_kd)                       (Eq. 5; Eq. 8 with two sigma channels)
    L_inst += LovaszHinge(2 phi_k - 1, 1[S_k])                          over all pixels of the image
    L_smooth += mean over S_k of (s_i - stop_grad(s_k))^2               (Eq. 12)
    seed target of the instance's class channel on S_k = stop_grad(phi_k), 0 elsewhere (Eq. 10)
L_inst and L_smooth are averaged over the image's instances, L_seed is the squared error summed over
class channels (foreground pixels weighted by `foreground_weight`) divided by H*W, and the image losses
are averaged over the batch: loss = w_instance L_inst + w_smooth L_smooth + w_seed L_seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from instseg_core.losses.lovasz import lovasz_hinge_flat
from instseg_core.networks.embedding_coding import SIGMA_SCALE, margin_to_sigma_raw
from instseg_core.networks.spatial_embeddings import coordinate_map

PHI_FLOOR = 1e-3


@dataclass
class SpatialEmbeddingLossConfig:
    """learn_sigma=False: a fixed margin of `fixed_margin_px` input pixels (paper: 20 px at 2048 x 1024);
    center: 'centroid' or 'learnable' (Eq. 9)."""

    learn_sigma: bool = True
    center: str = "centroid"
    foreground_weight: float = 10.0
    w_instance: float = 1.0
    w_smooth: float = 10.0
    w_seed: float = 1.0
    fixed_margin_px: float = 20.0


class SpatialEmbeddingLoss(nn.Module):
    """forward(raw, instances, labels, ignore) -> (loss, {'instance', 'smooth', 'seed'} floats).

    raw: (B, 2 + n_sigma + n_classes, H, W) network output; instances: (B, H, W) int64, 0 = background,
    each instance a distinct positive value; labels: (B, H, W) int64 class index + 1 of each instance
    pixel (0 elsewhere); ignore: (B, H, W) bool, pixels left out of the seed loss (crowd/group regions).
    """

    def __init__(self, n_sigma: int, n_classes: int, config: SpatialEmbeddingLossConfig | None = None) -> None:
        super().__init__()
        self.n_sigma, self.n_classes = n_sigma, n_classes
        self.config = config or SpatialEmbeddingLossConfig()
        if self.config.center not in ("centroid", "learnable"):
            raise ValueError(f"center must be 'centroid' or 'learnable', got {self.config.center!r}")
        self.fixed_bandwidth = float(torch.exp(torch.tensor(SIGMA_SCALE * margin_to_sigma_raw(
            self.config.fixed_margin_px))))

    def forward(self, raw: torch.Tensor, instances: torch.Tensor, labels: torch.Tensor,
                ignore: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        batch, channels, height, width = raw.shape
        if channels != 2 + self.n_sigma + self.n_classes:
            raise ValueError(f"expected {2 + self.n_sigma + self.n_classes} channels, got {channels}")
        coordinates = coordinate_map(height, width, raw.device)
        total = raw.new_zeros(())
        parts = {"instance": 0.0, "smooth": 0.0, "seed": 0.0}
        for b in range(batch):
            embedding = torch.tanh(raw[b, 0:2]) + coordinates
            sigma = raw[b, 2:2 + self.n_sigma]
            seed = torch.sigmoid(raw[b, 2 + self.n_sigma:])
            seed_target = torch.zeros_like(seed)
            seed_weight = torch.ones_like(seed)
            seed_weight[:, ignore[b]] = 0.0
            instance_loss = raw.new_zeros(())
            smooth_loss = raw.new_zeros(())
            ids = torch.unique(instances[b])
            ids = ids[ids > 0]
            for instance_id in ids:
                in_mask = instances[b] == instance_id
                class_index = int(labels[b][in_mask][0]) - 1
                center = (embedding if cfg.center == "learnable" else coordinates)[:, in_mask].mean(1)
                bandwidth: torch.Tensor | float
                if cfg.learn_sigma:
                    sigma_in = sigma[:, in_mask]
                    sigma_mean = sigma_in.mean(1)
                    smooth_loss = smooth_loss + ((sigma_in - sigma_mean.detach()[:, None]) ** 2).mean()
                    bandwidth = torch.exp(SIGMA_SCALE * sigma_mean)[:, None, None]
                else:
                    bandwidth = self.fixed_bandwidth
                phi = torch.exp(-(((embedding - center[:, None, None]) ** 2) * bandwidth).sum(0))
                # Background pixels with phi < PHI_FLOOR sit at the end of the Lovasz ordering with errors
                # 2 phi < 2e-3 and gradients scaled by phi: leaving them out changes the loss by < 2e-3 in
                # total and makes the sort cost O(object) instead of O(image).
                keep = in_mask | (phi.detach() > PHI_FLOOR)
                instance_loss = instance_loss + lovasz_hinge_flat(phi[keep] * 2 - 1, in_mask[keep])
                seed_target[class_index][in_mask] = phi[in_mask].detach()
                seed_weight[class_index][in_mask] = cfg.foreground_weight
            count = max(len(ids), 1)
            seed_loss = (seed_weight * (seed - seed_target) ** 2).sum() / (height * width)
            image_loss = (cfg.w_instance * instance_loss / count + cfg.w_smooth * smooth_loss / count
                          + cfg.w_seed * seed_loss)
            total = total + image_loss
            parts["instance"] += instance_loss.item() / count / batch
            parts["smooth"] += smooth_loss.item() / count / batch
            parts["seed"] += seed_loss.item() / batch
        return total / batch, parts
