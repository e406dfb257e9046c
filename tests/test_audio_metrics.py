"""Audio metrics with known answers (Fréchet distance between Gaussians, cosine scores, re-ranking,
signal statistics), CLAP through transformers on a tiny random model saved to a folder, and the
one-line error for a missing embedder folder."""

from __future__ import annotations

import math

import pytest
import torch

from omniguide.core.errors import ConfigError
from omniguide.modalities.audio import metrics as M


def test_frechet_distance_of_known_gaussians():
    """Closed forms: equal sets give 0; a mean shift d gives |d|^2; isotropic covariances a^2 I and
    b^2 I in D dims give D (a - b)^2; diagonal ones sum (sqrt(u) - sqrt(v))^2."""
    mu = torch.tensor([1.0, -2.0, 0.5])
    cov = torch.diag(torch.tensor([1.0, 4.0, 0.25]))
    assert M.frechet_from_stats(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-10)
    shift = torch.tensor([3.0, 0.0, -4.0])
    assert M.frechet_from_stats(mu, cov, mu + shift, cov) == pytest.approx(25.0, abs=1e-9)
    eye = torch.eye(5, dtype=torch.float64)
    assert M.frechet_from_stats(torch.zeros(5), 4 * eye, torch.zeros(5), 9 * eye) == pytest.approx(5.0, abs=1e-9)
    u, v = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 1.0, 9.0])
    expected = float(((u.sqrt() - v.sqrt()) ** 2).sum())
    assert M.frechet_from_stats(torch.zeros(3), torch.diag(u), torch.zeros(3), torch.diag(v)) == pytest.approx(expected)


def test_frechet_distance_is_rotation_invariant_and_matches_scipy():
    """A non-diagonal case against scipy's matrix square root (the formula of the FAD / FID code)."""
    scipy_linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64)
    b = torch.randn(300, 6, generator=g, dtype=torch.float64) * 1.5 + 0.3
    mu_a, cov_a = a.mean(0).numpy(), torch.cov(a.T).numpy()
    mu_b, cov_b = b.mean(0).numpy(), torch.cov(b.T).numpy()
    root = scipy_linalg.sqrtm(cov_a @ cov_b).real
    reference = float(((mu_a - mu_b) ** 2).sum() + (cov_a + cov_b - 2 * root).trace())
    assert M.frechet_distance(a, b) == pytest.approx(reference, rel=1e-8)
    rotation = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))[0]
    assert M.frechet_distance(a @ rotation, b @ rotation) == pytest.approx(reference, rel=1e-8)


def test_frechet_distance_of_samples_approaches_the_gaussian_value():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(20000, 4, generator=g, dtype=torch.float64)
    b = 2 * torch.randn(20000, 4, generator=g, dtype=torch.float64) + 1
    assert M.frechet_distance(a, b) == pytest.approx(4 * 1 + 4 * (2 - 1) ** 2, rel=0.03)
    with pytest.raises(ValueError, match=r"\[N >= 2, D\]"):
        M.frechet_distance(a[:1], b)


def test_cosine_scores_and_reranking():
    text = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    audio = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    torch.testing.assert_close(M.cosine_scores(text, audio), torch.tensor([1.0, 0.0, math.sqrt(0.5)],
                                                                          dtype=torch.float64))
    clips = torch.arange(3.0).reshape(3, 1, 1)
    kept, order = M.rerank(clips, torch.tensor([0.1, 0.9, 0.5]), keep=2)
    assert order.tolist() == [1, 2] and kept.flatten().tolist() == [1.0, 2.0]


def test_signal_stats_of_known_signals():
    t = torch.arange(8000) / 8000
    tone = 0.5 * torch.sin(2 * math.pi * 440 * t)
    stats = M.signal_stats(tone.reshape(1, 1, -1))
    assert stats["peak"] == pytest.approx(0.5, abs=1e-3) and stats["rms"] == pytest.approx(0.5 / math.sqrt(2), rel=1e-3)
    assert stats["crest"] == pytest.approx(math.sqrt(2), rel=1e-3) and stats["clipped"] == 0.0
    assert stats["flatness"] < 0.01
    noise = torch.randn(1, 1, 8000, generator=torch.Generator().manual_seed(0))
    assert 0.4 < M.signal_stats(noise)["flatness"] < 0.7
    square = torch.sign(tone).reshape(1, 1, -1)
    assert M.signal_stats(square)["clipped"] > 0.9


@pytest.fixture(scope="module")
def clap_folder(tmp_path_factory):
    """A tiny random ClapModel and ClapProcessor saved to a folder."""
    import tiny_audio as TA

    return TA.clap(tmp_path_factory.mktemp("clap"))


def test_clap_embedder_and_scorer_from_a_folder(clap_folder):
    embedder = M.ClapEmbedder(str(clap_folder))
    waves = torch.randn(3, 2, 8000, generator=torch.Generator().manual_seed(0)) * 0.1
    audio = embedder.embed_audio(waves, 8000)                        # stereo 8 kHz -> mono 16 kHz inside
    text = embedder.embed_text(["a rising chirp", "a dog barking in the rain", "noise"])
    assert audio.shape == (3, 16) and text.shape == (3, 16)
    assert torch.isfinite(audio).all() and torch.isfinite(text).all()
    scores = M.text_audio_score(embedder, waves, 8000, "a rising chirp")
    reference = M.cosine_scores(embedder.embed_text(["a rising chirp"] * 3), audio)
    torch.testing.assert_close(scores, reference)
    scorer = M.build_clap_scorer(str(clap_folder))
    out = scorer(waves, "a rising chirp", rate=8000)
    assert out["clap_score"] == pytest.approx(float(reference.mean()), abs=1e-6)


def test_missing_embedder_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match=r"embedder.path: embedder folder not found: .*nowhere") as err:
        M.ClapEmbedder(str(tmp_path / "nowhere"))
    assert "\n" not in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="is not a model folder .config.json is missing"):
        M.ClapEmbedder(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="the clap scorer needs the path"):
        M.build_clap_scorer()
