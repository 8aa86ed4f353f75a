"""Emotion contrast vectors from pooled story features, with optional neutral-PC denoising.

Per layer: each emotion's mean feature (`story_mean`: the mean of per-story means, as Sofroniew
et al.; `token_weighted`: every pooled token counts once, as the replication's code), minus the
mean over emotions. Denoising projects out the top principal components of the neutral texts'
features, the smallest k whose cumulative explained variance reaches `variance` (0 disables).
Projection and centring are both linear, so their order does not matter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from emovec.errors import EmovecError

POOLINGS = ("story_mean", "token_weighted")


@dataclass
class EmotionVectors:
    raw: torch.Tensor  # (n_layers, E, H): centred, before denoising
    vectors: torch.Tensor  # (n_layers, E, H): centred and denoised
    denoise_k: list[int]  # neutral PCs removed at each layer
    emotions: list[str]
    layers: list[int]


def emotion_means(mean: torch.Tensor, count: torch.Tensor, emotion_ids: torch.Tensor, num_emotions: int,
                  pooling: str = "story_mean") -> torch.Tensor:
    """(n_layers, E, H) per-emotion means of per-story features (N, n_layers, H)."""
    if pooling not in POOLINGS:
        raise EmovecError(f"extract.pooling={pooling!r} is not one of {', '.join(POOLINGS)}")
    weight = count.double() if pooling == "token_weighted" else (count > 0).double()
    onehot = torch.nn.functional.one_hot(emotion_ids.long(), num_emotions).double() * weight[:, None]  # (N, E)
    totals = onehot.sum(0)
    if (totals == 0).any():
        raise EmovecError(f"emotion index {int((totals == 0).nonzero()[0])} has no usable story")
    sums = torch.einsum("ne,nlh->leh", onehot, mean.double())
    return (sums / totals[None, :, None]).float()


def centre(means: torch.Tensor) -> torch.Tensor:
    """Subtract the mean over emotions (dim 1)."""
    return means - means.mean(dim=1, keepdim=True)


def neutral_components(neutral: torch.Tensor, variance: float) -> tuple[list[torch.Tensor], list[int]]:
    """Per layer, the top PCs (k, H) of the centred neutral features (M, n_layers, H) reaching `variance`."""
    if not 0.0 <= variance <= 1.0:
        raise EmovecError(f"extract.denoise.variance={variance} must lie in [0, 1] (0 disables)")
    bases, ks = [], []
    for layer in range(neutral.shape[1]):
        x = neutral[:, layer].double()
        x = x - x.mean(0, keepdim=True)
        if variance == 0.0 or x.shape[0] < 2:
            bases.append(torch.zeros((0, x.shape[1]), dtype=torch.float64))
            ks.append(0)
            continue
        _, s, vh = torch.linalg.svd(x, full_matrices=False)
        ratio = (s**2) / (s**2).sum().clamp(min=1e-30)
        k = int(torch.searchsorted(ratio.cumsum(0), torch.tensor(variance, dtype=torch.float64) - 1e-12)) + 1
        k = min(k, vh.shape[0])
        bases.append(vh[:k])
        ks.append(k)
    return bases, ks


def project_out(vectors: torch.Tensor, bases: Sequence[torch.Tensor]) -> torch.Tensor:
    """Remove the span of each layer's orthonormal basis from that layer's vectors (n_layers, E, H)."""
    out = vectors.double().clone()
    for layer, basis in enumerate(bases):
        if basis.shape[0]:
            out[layer] -= (out[layer] @ basis.T) @ basis
    return out.float()


def compute_vectors(mean: torch.Tensor, count: torch.Tensor, emotion_ids: torch.Tensor, emotions: list[str],
                    layers: list[int], pooling: str, neutral: torch.Tensor | None = None,
                    variance: float = 0.0) -> EmotionVectors:
    raw = centre(emotion_means(mean, count, emotion_ids, len(emotions), pooling))
    if neutral is not None and variance > 0:
        bases, ks = neutral_components(neutral, variance)
        vectors = project_out(raw, bases)
    else:
        vectors, ks = raw.clone(), [0] * len(layers)
    return EmotionVectors(raw=raw, vectors=vectors, denoise_k=ks, emotions=emotions, layers=layers)
