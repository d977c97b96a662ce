"""Adam with bias correction and global-norm gradient clipping (the math is in the backend)."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class AdamConfig:
    lr: float = 2e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 5.0        # global-norm clip; 0 switches clipping off


class Adam:
    """Moments m, v (one array per parameter, on the backend) and the step count."""

    def __init__(self, params, backend, cfg: AdamConfig):
        self.be, self.cfg = backend, cfg
        self.m = {n: backend.xp.zeros_like(p) for n, p in params.items()}
        self.v = {n: backend.xp.zeros_like(p) for n, p in params.items()}
        self.step = 0

    def clip_scale(self, grads):
        """-> (global norm, factor <= 1 that brings the norm down to grad_clip)."""
        norm = self.be.global_norm(grads)
        clip = self.cfg.grad_clip
        scale = clip / (norm + 1e-6) if clip > 0 and norm > clip else 1.0
        return norm, scale

    def update(self, params, grads, lr, grad_scale=1.0):
        """One Adam step in place at learning rate lr (the schedule lives in the trainer)."""
        self.step += 1
        c = self.cfg
        self.be.adam_update(params, grads, self.m, self.v, self.step, lr, c.beta1, c.beta2, c.eps, grad_scale)


def lr_at(step, total, base_lr, decay):
    """Learning rate for 1-based `step` of `total`: constant, or cosine down to 10% when decay."""
    if not decay or total <= 1:
        return base_lr
    frac = min(max((step - 1) / (total - 1), 0.0), 1.0)
    return base_lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * frac)))
