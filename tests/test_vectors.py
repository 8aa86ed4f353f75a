"""Vectors and denoising against direct numpy computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emovec.errors import EmovecError
from emovec.vectors import centre, compute_vectors, emotion_means, neutral_components, project_out

rng = np.random.default_rng(0)
N, L, H, E = 12, 3, 8, 4
MEAN = rng.normal(size=(N, L, H)).astype(np.float32)
COUNT = np.array([3, 5, 1, 7, 2, 2, 4, 9, 1, 1, 6, 3])
IDS = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])


def test_story_mean_is_the_mean_of_story_means():
    got = emotion_means(torch.tensor(MEAN), torch.tensor(COUNT), torch.tensor(IDS), E, "story_mean").numpy()
    for e in range(E):
        np.testing.assert_allclose(got[:, e], MEAN[IDS == e].mean(0), rtol=1e-5, atol=1e-6)


def test_token_weighted_counts_every_token_once():
    got = emotion_means(torch.tensor(MEAN), torch.tensor(COUNT), torch.tensor(IDS), E, "token_weighted").numpy()
    for e in range(E):
        w = COUNT[IDS == e].astype(float)
        expect = (MEAN[IDS == e] * w[:, None, None]).sum(0) / w.sum()
        np.testing.assert_allclose(got[:, e], expect, rtol=1e-5, atol=1e-6)


def test_unknown_pooling_is_refused():
    with pytest.raises(EmovecError, match="pooling"):
        emotion_means(torch.tensor(MEAN), torch.tensor(COUNT), torch.tensor(IDS), E, "max")


def test_centre_removes_the_mean_over_emotions():
    means = torch.tensor(rng.normal(size=(L, E, H)), dtype=torch.float32)
    out = centre(means).numpy()
    np.testing.assert_allclose(out.mean(1), 0, atol=1e-6)


def test_neutral_k_is_the_smallest_count_reaching_the_variance():
    neutral = rng.normal(size=(20, L, H)) * np.array([5, 3, 2, 1, 1, 0.5, 0.2, 0.1])
    bases, ks = neutral_components(torch.tensor(neutral), 0.5)
    for layer in range(L):
        x = neutral[:, layer] - neutral[:, layer].mean(0)
        s = np.linalg.svd(x, compute_uv=False)
        cum = np.cumsum(s**2) / np.sum(s**2)
        assert ks[layer] == int(np.argmax(cum >= 0.5)) + 1
        assert bases[layer].shape == (ks[layer], H)


def test_denoise_removes_the_neutral_subspace_and_zero_disables():
    neutral = torch.tensor(rng.normal(size=(15, L, H)))
    vec = compute_vectors(torch.tensor(MEAN), torch.tensor(COUNT), torch.tensor(IDS), list("abcd"),
                          list(range(L)), "story_mean", neutral, 0.6)
    bases, ks = neutral_components(neutral, 0.6)
    assert vec.denoise_k == ks
    for layer in range(L):
        residual = vec.vectors[layer].double() @ bases[layer].T
        np.testing.assert_allclose(residual.numpy(), 0, atol=1e-5)
        # Independent projection: I - B^T B applied to the raw vectors.
        b = bases[layer].numpy()
        expect = vec.raw[layer].numpy() @ (np.eye(H) - b.T @ b)
        np.testing.assert_allclose(vec.vectors[layer].numpy(), expect, atol=1e-5)
    off = compute_vectors(torch.tensor(MEAN), torch.tensor(COUNT), torch.tensor(IDS), list("abcd"),
                          list(range(L)), "story_mean", neutral, 0.0)
    assert off.denoise_k == [0] * L
    torch.testing.assert_close(off.vectors, off.raw)


def test_projection_and_centring_commute():
    means = torch.tensor(rng.normal(size=(L, E, H)))
    bases, _ = neutral_components(torch.tensor(rng.normal(size=(10, L, H))), 0.5)
    a = project_out(centre(means), bases)
    b = centre(project_out(means, bases))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_bad_variance_is_refused():
    with pytest.raises(EmovecError, match="denoise.variance"):
        neutral_components(torch.zeros(4, 1, 3), 1.5)
