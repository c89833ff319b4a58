"""Light-ASD written here reproduces the reference implementation's outputs on the parity fixture
(../shared/models/light_asd: the official weights, inputs and outputs): MFCC from the waveform within
1e-3, embeddings, logits and scores from the same inputs within 1e-4, and the batched window of case D
(two face tracks of different length) with the reference's padding and without it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

FOLDER = Path(__file__).resolve().parent.parent.parent / "shared" / "models" / "light_asd"
torch = pytest.importorskip("torch")
needs_fixture = pytest.mark.skipif(not (FOLDER / "parity.npz").exists(), reason="no Light-ASD fixture in ../shared")


@pytest.fixture(scope="module")
def fixture():
    return np.load(FOLDER / "parity.npz")


@pytest.fixture(scope="module")
def model():
    from stages.lib.light_asd import load_model

    return load_model(str(FOLDER / "finetuning_TalkSet.model"))


@needs_fixture
def test_the_official_weights_load_strictly(model):
    from stages.lib.light_asd import build_model

    state = torch.load(FOLDER / "finetuning_TalkSet.model", map_location="cpu", weights_only=True)
    assert set(build_model().state_dict()) == set(state) - {"lossV.FC.weight", "lossV.FC.bias"}
    assert not model.training


@needs_fixture
@pytest.mark.parametrize("case", "ABC")
def test_mfcc_from_the_waveform(fixture, case):
    from stages.lib.light_asd import mfcc

    frames = len(fixture[f"{case}_video_u8"])
    features = mfcc(fixture[f"{case}_wav_int16"])
    assert features.shape == (4 * frames + 1, 13)          # the reference then keeps 4T rows
    np.testing.assert_allclose(features[:4 * frames], fixture[f"{case}_mfcc"], atol=1e-3, rtol=0)


@needs_fixture
@pytest.mark.parametrize("case", "ABC")
def test_model_outputs_from_the_features(fixture, model, case):
    faces = torch.from_numpy(fixture[f"{case}_video_u8"]).float()[None]
    with torch.no_grad():
        out = model.embeddings(faces, torch.from_numpy(fixture[f"{case}_mfcc"])[None])
    for name in ("audio_embed", "visual_embed", "backend_out", "logits", "score"):
        np.testing.assert_allclose(out[name][0].numpy(), fixture[f"{case}_{name}"], atol=1e-4, rtol=0, err_msg=name)
    assert ((out["score"][0].numpy() > 0) == (fixture[f"{case}_score"] > 0)).all()


@needs_fixture
def test_a_window_of_two_tracks(fixture, model):
    from stages.lib.light_asd import score_tracks, window_ratio

    starts, lengths = fixture["D_track_start"].astype(int), fixture["D_track_len"].astype(int)
    tracks = [(fixture["B_video_u8"].astype(np.float32), fixture["B_mfcc"]),
              (fixture["C_video_u8"].astype(np.float32), fixture["B_mfcc"][80:480])]
    assert [len(f) for f, _ in tracks] == list(lengths)
    padded = score_tracks(model, tracks, pad_like_reference=True)
    for scores, reference, n in zip(padded, fixture["D_scores_padded"], lengths):
        np.testing.assert_allclose(scores, reference[:n], atol=1e-4, rtol=0)
    ratio, mask = window_ratio(150, list(zip(starts, padded)))
    assert (mask == fixture["D_asd_frame_mask"].astype(bool)).all()
    assert round(ratio, 2) == pytest.approx(float(fixture["D_asd_ratio"]))
    # by length, a track scores as it does alone: the padding no longer moves its scores
    alone = score_tracks(model, tracks)
    np.testing.assert_allclose(alone[1], fixture["D_track1_alone_score"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(alone[0], fixture["B_score"], atol=1e-4, rtol=0)
    assert np.abs(padded[1] - alone[1]).max() > 0.1     # the fixture's padding effect is real


# weights: the config path, the environment, the shared copy, the cache, a checked download ---------------

def test_weights_come_from_config_env_cache_or_a_checked_download(tmp_path, monkeypatch):
    import hashlib

    from stages.lib import light_asd
    from tests.support.http_server import LoopbackServer

    monkeypatch.setattr(light_asd, "shared_weights", lambda: tmp_path / "no-shared" / light_asd.WEIGHTS_NAME)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(light_asd.WEIGHTS_ENV, raising=False)
    with pytest.raises(ValueError, match="no such file"):
        light_asd.resolve_weights(str(tmp_path / "missing.model"))
    mine = tmp_path / "mine.model"
    mine.write_bytes(b"weights")
    assert light_asd.resolve_weights(str(mine)) == mine
    monkeypatch.setenv(light_asd.WEIGHTS_ENV, str(mine))
    assert light_asd.resolve_weights() == mine
    monkeypatch.delenv(light_asd.WEIGHTS_ENV)
    with pytest.raises(ValueError, match="LIGHT_ASD_WEIGHTS"):
        light_asd.resolve_weights(download=False)

    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "w.model").write_bytes(b"the release bytes")
    good = hashlib.sha256(b"the release bytes").hexdigest()
    with LoopbackServer(tmp_path / "www") as server:
        with pytest.raises(ValueError, match="sha256"):
            light_asd.resolve_weights(url=server.url("w.model"), sha256="0" * 64)
        assert not (light_asd.cache_dir() / light_asd.WEIGHTS_NAME).exists()     # a wrong file is not kept
        got = light_asd.resolve_weights(url=server.url("w.model"), sha256=good)
        assert got == light_asd.cache_dir() / light_asd.WEIGHTS_NAME and got.read_bytes() == b"the release bytes"
        assert light_asd.resolve_weights(url=server.url("gone.model")) == got   # cached: no second download
        dead = server.url("w.model")
    (light_asd.cache_dir() / light_asd.WEIGHTS_NAME).unlink()
    with pytest.raises(ValueError, match="download from .* failed.*LIGHT_ASD_WEIGHTS"):
        light_asd.resolve_weights(url=dead, timeout=5)                          # offline: says what to set
