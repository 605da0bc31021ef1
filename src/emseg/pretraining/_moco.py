"""MoCo v2 (Chen et al. 2020) for the encoder of any emseg network, with EM augmentations.

Two augmented views of the same patch go through the network up to its encoder bottleneck (the module
Grad-CAM uses: ``model.gradcam_layer``, else the deepest of ``model.encoders``); the rest of the network
is not run.  The bottleneck features are averaged over space and projected by a 2-layer MLP (a temporary
head).  The query encoder learns by InfoNCE against the key from a momentum copy and a queue of earlier
keys (the negatives).  Augmentations suit grey EM: random resized crops, flips, 90 degree rotations,
brightness / contrast, Gaussian blur and noise; no colour jitter.  Single device: no shuffled batch norm.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MoCo", "em_augment", "encoder_layer", "info_nce"]


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """InfoNCE: cross-entropy of the positive among ``1 + K`` candidates.

    Args:
        q, k: ``(N, D)`` unit vectors (queries and their positive keys).
        queue: ``(K, D)`` unit vectors (negatives).
        temperature: the softmax temperature ``tau``.

    Returns:
        ``mean_i -log(exp(q_i.k_i / tau) / (exp(q_i.k_i / tau) + sum_j exp(q_i.n_j / tau)))``.
    """
    positive = (q * k).sum(dim=1, keepdim=True)
    negative = q @ queue.t()
    logits = torch.cat([positive, negative], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def encoder_layer(model: nn.Module) -> str:
    """The module name of ``model``'s encoder bottleneck (the same rule as Grad-CAM's default layer)."""
    declared = getattr(model, "gradcam_layer", None)
    if isinstance(declared, str):
        return declared
    encoders = getattr(model, "encoders", None)
    if isinstance(encoders, (nn.ModuleList, nn.Sequential)) and len(encoders) > 0:
        return f"encoders.{len(encoders) - 1}"
    raise ValueError(f"model {type(model).__name__} declares no encoder bottleneck (no 'gradcam_layer', no "
                     f"'encoders'): use pretraining.method: mim for it")


class _Stop(Exception):
    pass


class _Features(nn.Module):
    """The bottleneck features of a network, averaged over space: ``(N, C)``; the decoder is not run."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.layer = encoder_layer(network)
        self._out: torch.Tensor | None = None
        dict(network.named_modules())[self.layer].register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self._out = output
        raise _Stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            self.network(x)
        except _Stop:
            pass
        out, self._out = self._out, None
        if out is None:
            raise RuntimeError(f"the encoder layer {self.layer!r} was not reached")
        return out.flatten(2).mean(dim=2)


class MoCo(nn.Module):
    """Query network + projection, momentum copies of both, and the queue of negative keys."""

    def __init__(self, network: nn.Module, *, example: torch.Tensor, dim: int = 128, queue: int = 1024,
                 momentum: float = 0.99, temperature: float = 0.2) -> None:
        super().__init__()
        self.key_network = copy.deepcopy(network)  # before any hook is attached to ``network``
        self.query = _Features(network)
        self.key = _Features(self.key_network)
        was_training = network.training
        network.eval()
        with torch.no_grad():  # the bottleneck's channels, from one example patch ``(1, C, *S)``
            channels = int(self.query(example).shape[1])
        network.train(was_training)
        hidden = max(dim, 2 * channels)
        self.project = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))
        self.key_project = copy.deepcopy(self.project)
        for p in [*self.key_network.parameters(), *self.key_project.parameters()]:
            p.requires_grad_(False)
        self.momentum, self.temperature = momentum, temperature
        self.register_buffer("queue", F.normalize(torch.randn(queue, dim), dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def momentum_update(self) -> None:
        pairs = [*zip(self.query.network.parameters(), self.key_network.parameters()),
                 *zip(self.project.parameters(), self.key_project.parameters())]
        for q, k in pairs:
            k.mul_(self.momentum).add_(q.detach(), alpha=1.0 - self.momentum)
        for q, k in zip(self.query.network.buffers(), self.key_network.buffers()):
            k.copy_(q)

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        n, size = keys.shape[0], self.queue.shape[0]
        idx = (self.pointer + torch.arange(n, device=keys.device)) % size
        self.queue[idx] = keys.to(self.queue.dtype)
        self.pointer.copy_((self.pointer + n) % size)

    def forward(self, view_q: torch.Tensor, view_k: torch.Tensor) -> torch.Tensor:
        q = F.normalize(self.project(self.query(view_q).float()), dim=1)
        with torch.no_grad():
            self.momentum_update()
            k = F.normalize(self.key_project(self.key(view_k).float()), dim=1)
        loss = info_nce(q, k, self.queue.clone().detach(), temperature=self.temperature)
        self._enqueue(k)
        return loss


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(2.5 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _blur_yx(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of the last two axes of ``x`` ``(C, *S)`` (reflect padding)."""
    k = _gaussian_kernel(sigma).to(device=x.device, dtype=x.dtype)
    r = k.numel() // 2
    shape = x.shape
    flat = x.reshape(-1, 1, shape[-2], shape[-1])
    flat = F.conv2d(F.pad(flat, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return flat.reshape(shape)


def em_augment(x: torch.Tensor, rng: np.random.Generator, *, crop_scale: tuple[float, float] = (0.35, 1.0)) -> torch.Tensor:
    """One random EM view of each patch of ``x`` ``(N, C, Y, X)`` or ``(N, C, Z, Y, X)`` (normalised).

    Per patch: a random resized crop in (y, x) (area fraction in ``crop_scale``, aspect 3/4 to 4/3) back to
    the patch size, flips and a 90 degree rotation in (y, x), contrast x U(0.7, 1.3) and brightness
    + U(-0.3, 0.3) (normalised units), Gaussian blur (sigma U(0.3, 1.5), probability 0.5) and Gaussian
    noise (std U(0, 0.2), probability 0.5).  Crops and rotations keep the shape (square y, x required
    for rotations; rectangular patches are flipped only).
    """
    out = []
    h, w = x.shape[-2:]
    for patch in x:
        area = rng.uniform(*crop_scale) * h * w
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        ch = int(round(min(h, max(4, math.sqrt(area / aspect)))))
        cw = int(round(min(w, max(4, math.sqrt(area * aspect)))))
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        view = patch[..., y0:y0 + ch, x0:x0 + cw]
        if (ch, cw) != (h, w):
            size = (*view.shape[1:-2], h, w)
            mode = "trilinear" if view.ndim == 4 else "bilinear"
            view = F.interpolate(view[None], size=size, mode=mode, align_corners=False)[0]
        if rng.random() < 0.5:
            view = view.flip(-1)
        if rng.random() < 0.5:
            view = view.flip(-2)
        if h == w:
            view = torch.rot90(view, int(rng.integers(0, 4)), dims=(-2, -1))
        view = view * float(rng.uniform(0.7, 1.3)) + float(rng.uniform(-0.3, 0.3))
        if rng.random() < 0.5:
            view = _blur_yx(view, float(rng.uniform(0.3, 1.5)))
        if rng.random() < 0.5:
            noise = torch.from_numpy(rng.standard_normal(view.shape).astype(np.float32)).to(view.device)
            view = view + float(rng.uniform(0.0, 0.2)) * noise
        out.append(view.contiguous())
    return torch.stack(out)
