"""Light-ASD (Liao et al., CVPR 2023, MIT): active speaker scores of face tracks from their frames and the
audio, written here in PyTorch to load the official `finetuning_TalkSet.model` weights with strict=True.

Inputs per track of T frames (25 fps): `faces` (T, 112, 112) gray 0..255, and `mfcc` (4T, 13) from
`mfcc()` of the 16 kHz audio over the same span. Output: one raw logit per frame (the second of the two
logits of the audio-visual head); a frame is "speaking" when it is > 0.

The network (from the weights' layout and the reference's behaviour, ../shared/models/light_asd/README):
- visual: three blocks (1 -> 32 -> 64 -> 128 channels), each the sum of two branches (k = 3, 5) of a
  spatial k x k conv and a temporal k conv, then a 1x1x1 conv, every conv followed by BatchNorm + ReLU;
  block 1's spatial convs stride 2; max-pool (1, 3, 3)/(1, 2, 2) after blocks 1 and 2; max over space.
- audio: the same pattern in 2D over (cepstrum, time) with (k, 1) and (1, k) convs; max-pool over time
  (3, stride 2) after blocks 1 and 2 (4T -> T); mean over the cepstral axis.
- fusion: visual + audio embeddings, a forward GRU, GELU, a GRU over reversed time, GELU; a linear head.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
VISUAL_MEAN, VISUAL_STD = 0.4161, 0.1688
BN_EPS = 1e-3


def mfcc(signal: np.ndarray, rate: int = SAMPLE_RATE) -> np.ndarray:
    """13 MFCCs per 10 ms (25 ms frames), float64, as python_speech_features 0.6's `mfcc` with its
    defaults: pre-emphasis 0.97, rectangular window, 512-point power spectrum / 512, 26 mel filters
    0..rate/2, log, orthonormal DCT-II, lifter 22, c0 = log frame energy; zeros become float eps."""
    signal = np.asarray(signal, dtype=np.float64)
    emphasised = np.append(signal[:1], signal[1:] - 0.97 * signal[:-1])
    length, step, nfft = int(round(0.025 * rate)), int(round(0.01 * rate)), 512
    count = 1 if len(emphasised) <= length else 1 + int(math.ceil((len(emphasised) - length) / step))
    padded = np.concatenate([emphasised, np.zeros((count - 1) * step + length - len(emphasised))])
    frames = padded[np.arange(length)[None, :] + step * np.arange(count)[:, None]]
    power = np.abs(np.fft.rfft(frames, nfft)) ** 2 / nfft
    energy = power.sum(axis=1)
    energy = np.where(energy == 0, np.finfo(float).eps, energy)
    feat = power @ mel_filters(26, nfft, rate).T
    feat = np.log(np.where(feat == 0, np.finfo(float).eps, feat))
    cepstra = feat @ dct_matrix(feat.shape[1]).T[:, :13]
    cepstra *= 1 + 11.0 * np.sin(np.pi * np.arange(13) / 22)
    cepstra[:, 0] = np.log(energy)
    return cepstra


def mel_filters(count: int, nfft: int, rate: int) -> np.ndarray:
    high = 2595 * np.log10(1 + (rate / 2) / 700)
    hz = 700 * (10 ** (np.linspace(0, high, count + 2) / 2595) - 1)
    bins = np.floor((nfft + 1) * hz / rate)
    filters = np.zeros((count, nfft // 2 + 1))
    for j in range(count):
        left, centre, right = int(bins[j]), int(bins[j + 1]), int(bins[j + 2])
        for i in range(left, centre):
            filters[j, i] = (i - bins[j]) / (bins[j + 1] - bins[j])
        for i in range(centre, right):
            filters[j, i] = (bins[j + 2] - i) / (bins[j + 2] - bins[j + 1])
    return filters


def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II as a matrix: row k = the k-th basis vector."""
    k, i = np.arange(n)[:, None], np.arange(n)[None, :]
    matrix = np.cos(np.pi * k * (2 * i + 1) / (2 * n)) * math.sqrt(2 / n)
    matrix[0] /= math.sqrt(2)
    return matrix


def build_model():
    """The Light-ASD module tree whose state dict is the official weights' (less the unused visual-only
    head `lossV`)."""
    import torch
    from torch import nn

    import torch.nn.functional as F

    def _norm(x: torch.Tensor, bn) -> torch.Tensor:
        """A BatchNorm3d's transform on a tensor of another rank (channels on dim 1)."""
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.training, bn.momentum, bn.eps)

    class Block(nn.Module):
        """Two branches (k = 3, 5): a conv named `{first}_{k}` then a temporal conv `t_{k}`, each followed by
        BatchNorm + ReLU, summed; then a 1x1 conv + BatchNorm + ReLU. `first`: `s` (visual, spatial k x k)
        or `m` (audio, over the cepstral axis)."""

        def __init__(self, cin: int, cout: int, first: str, stride: int = 1) -> None:
            super().__init__()
            self.first = first
            video = first == "s"
            conv, norm = (nn.Conv3d, nn.BatchNorm3d) if video else (nn.Conv2d, nn.BatchNorm2d)
            for k in (3, 5):
                if video:
                    lead = conv(cin, cout, (1, k, k), (1, stride, stride), (0, k // 2, k // 2), bias=False)
                    time = conv(cout, cout, (k, 1, 1), 1, (k // 2, 0, 0), bias=False)
                else:
                    lead = conv(cin, cout, (k, 1), 1, (k // 2, 0), bias=False)
                    time = conv(cout, cout, (1, k), 1, (0, k // 2), bias=False)
                setattr(self, f"{first}_{k}", lead)
                setattr(self, f"bn_{first}_{k}", norm(cout, eps=BN_EPS))
                setattr(self, f"t_{k}", time)
                setattr(self, f"bn_t_{k}", norm(cout, eps=BN_EPS))
            self.last = conv(cout, cout, 1, bias=False)
            self.bn_last = norm(cout, eps=BN_EPS)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.first == "s":
                return self.video(x)
            total = 0
            for k in (3, 5):
                y = torch.relu(getattr(self, f"bn_{self.first}_{k}")(getattr(self, f"{self.first}_{k}")(x)))
                total = total + torch.relu(getattr(self, f"bn_t_{k}")(getattr(self, f"t_{k}")(y)))
            return torch.relu(self.bn_last(self.last(total)))

        def video(self, x: torch.Tensor) -> torch.Tensor:
            """The visual block on (B, C, T, H, W), its (1, k, k) and (k, 1, 1) Conv3d run as 2D convolutions
            (all frames as one batch; time x pixels as an image): the same sums, 1.7x faster on the CPU."""
            b, _, t, h, w = x.shape
            frames = x.transpose(1, 2).reshape(b * t, x.shape[1], h, w)
            total = 0
            for k in (3, 5):
                lead, temporal = getattr(self, f"s_{k}"), getattr(self, f"t_{k}")
                y = F.conv2d(frames, lead.weight[:, :, 0], stride=lead.stride[1:], padding=lead.padding[1:])
                y = torch.relu(_norm(y, getattr(self, f"bn_s_{k}")))
                _, c, ho, wo = y.shape
                y = y.reshape(b, t, c, ho * wo).transpose(1, 2)
                y = F.conv2d(y, temporal.weight[..., 0], padding=(k // 2, 0))
                total = total + torch.relu(_norm(y, getattr(self, f"bn_t_{k}")))
            out = torch.relu(_norm(F.conv2d(total, self.last.weight[..., 0]), self.bn_last))
            return out.reshape(b, -1, t, ho, wo)

    class VisualEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block1, self.block2, self.block3 = Block(1, 32, "s", 2), Block(32, 64, "s"), Block(64, 128, "s")
            self.pool = nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))

        def forward(self, faces: torch.Tensor) -> torch.Tensor:      # (B, T, 112, 112) normalised
            x = self.pool(self.block1(faces.unsqueeze(1)))
            x = self.block3(self.pool(self.block2(x)))                 # (B, 128, T, 14, 14)
            return x.amax(dim=(3, 4)).transpose(1, 2)                  # (B, T, 128)

    class AudioEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block1, self.block2, self.block3 = Block(1, 32, "m"), Block(32, 64, "m"), Block(64, 128, "m")
            self.pool = nn.MaxPool2d((1, 3), (1, 2), (0, 1))

        def forward(self, mfcc: torch.Tensor) -> torch.Tensor:        # (B, 4T, 13)
            x = self.pool(self.block1(mfcc.transpose(1, 2).unsqueeze(1)))
            x = self.block3(self.pool(self.block2(x)))                 # (B, 128, 13, T)
            return x.mean(dim=2).transpose(1, 2)                       # (B, T, 128)

    class Backend(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru_forward = nn.GRU(128, 128, batch_first=True)
            self.gru_backward = nn.GRU(128, 128, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = nn.functional.gelu(self.gru_forward(x)[0])
            x = self.gru_backward(x.flip(1))[0].flip(1)
            return nn.functional.gelu(x)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.visualEncoder, self.audioEncoder, self.GRU = VisualEncoder(), AudioEncoder(), Backend()

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.FC = nn.Linear(128, 2)

    class LightASD(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model, self.lossAV = Net(), Head()

        def embeddings(self, faces: torch.Tensor, mfcc: torch.Tensor) -> dict:
            """faces (B, T, 112, 112) gray 0..255, mfcc (B, 4T, 13): every intermediate the parity test reads."""
            visual = self.model.visualEncoder((faces / 255.0 - VISUAL_MEAN) / VISUAL_STD)
            audio = self.model.audioEncoder(mfcc)
            backend = self.model.GRU(visual + audio)
            logits = self.lossAV.FC(backend)
            return {"visual_embed": visual, "audio_embed": audio, "backend_out": backend, "logits": logits,
                    "score": logits[..., 1]}

        def forward(self, faces: torch.Tensor, mfcc: torch.Tensor) -> torch.Tensor:
            return self.embeddings(faces, mfcc)["score"]

    return LightASD()


def load_model(path: str):
    """Light-ASD with the official weights (the visual-only head `lossV`, unused at inference, dropped),
    strict=True, in eval mode."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("lossV.")}
    model = build_model()
    model.load_state_dict(state, strict=True)
    return model.eval()


def score_tracks(model, tracks: list[tuple[np.ndarray, np.ndarray]], pad_like_reference: bool = False,
                 max_batch: int | None = None) -> list[np.ndarray]:
    """Per-frame scores of face tracks [(faces (T, 112, 112), mfcc (4T, 13))], batched.

    Tracks of equal length share a forward pass (up to `max_batch`; default 64 on a GPU and 1 on the CPU,
    where a batch of two 150-frame tracks took 12% longer than two calls: bench/asd.py), so a track scores
    as it would alone. The reference
    instead pads every track of a window to the longest (faces 0, MFCC 0) and cuts the scores back;
    its temporal convolutions and backward GRU then read the padding, which moves real frames' scores
    (up to 2.2 in the parity fixture). `pad_like_reference=True` reproduces that."""
    import torch

    device = next(model.parameters()).device
    max_batch = max_batch or (1 if device.type == "cpu" else 64)
    scores: list[np.ndarray | None] = [None] * len(tracks)
    if pad_like_reference:
        groups = {max(len(f) for f, _ in tracks): list(range(len(tracks)))} if tracks else {}
    else:
        groups = {}
        for i, (faces, _) in enumerate(tracks):
            groups.setdefault(len(faces), []).append(i)
    with torch.no_grad():
        for length, members in groups.items():
            for start in range(0, len(members), max_batch):
                chunk = members[start:start + max_batch]
                faces = np.zeros((len(chunk), length, 112, 112), np.float32)
                mfccs = np.zeros((len(chunk), 4 * length, 13), np.float32)
                for row, i in enumerate(chunk):
                    f, m = tracks[i]
                    faces[row, :len(f)], mfccs[row, :len(m)] = f, m
                out = model(torch.from_numpy(faces).to(device), torch.from_numpy(mfccs).to(device)).cpu().numpy()
                for row, i in enumerate(chunk):
                    scores[i] = out[row, :len(tracks[i][0])]
    return scores  # type: ignore[return-value]


def window_ratio(window: int, tracks: list[tuple[int, np.ndarray]]) -> tuple[float, np.ndarray]:
    """(share of the window's frames where some track speaks, that frame mask): tracks as (first frame in
    the window, per-frame scores)."""
    speaking = np.zeros(window, dtype=bool)
    for first, scores in tracks:
        speaking[first:first + len(scores)] |= np.asarray(scores) > 0
    return float(speaking.mean()), speaking


WEIGHTS_NAME = "finetuning_TalkSet.model"
WEIGHTS_URL = "https://github.com/Junhua-Liao/Light-ASD/raw/main/weight/finetuning_TalkSet.model"
WEIGHTS_SHA256 = "efc375833887eefa9d209dc92810e18519b04c3c73ea35a549f2a7f40b7d94d5"
WEIGHTS_ENV = "LIGHT_ASD_WEIGHTS"


def shared_weights() -> Path:
    """The copy the project's shared folder holds (next to the repository), when there is one."""
    return Path(__file__).resolve().parents[3] / "shared" / "models" / "light_asd" / WEIGHTS_NAME


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "livecc-data" / "light_asd"


def resolve_weights(configured: str = "", url: str = WEIGHTS_URL, sha256: str = WEIGHTS_SHA256,
                    download: bool = True, timeout: float = 60.0) -> Path:
    """The Light-ASD weights file: `configured` (a config path), else $LIGHT_ASD_WEIGHTS, else the shared
    folder's copy, else the model cache, else downloaded from `url` into the cache (checked against the
    pinned sha256, written atomically). Raises ValueError saying what to set when none is available."""
    import hashlib

    for source, value in (("active_speaker.weights", configured), (WEIGHTS_ENV, os.environ.get(WEIGHTS_ENV, ""))):
        if value:
            path = Path(value).expanduser()
            if not path.is_file():
                raise ValueError(f"{source} = {value}: no such file")
            return path
    if shared_weights().is_file():
        return shared_weights()
    cached = cache_dir() / WEIGHTS_NAME
    if cached.is_file():
        return cached
    hint = (f"set active_speaker.weights or ${WEIGHTS_ENV} to a copy of {WEIGHTS_NAME} (Light-ASD, MIT), "
            f"or let it download from {url}")
    if not download:
        raise ValueError(f"no Light-ASD weights: {hint}")
    import httpx

    try:
        response = httpx.get(url, follow_redirects=True, timeout=timeout)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise ValueError(f"Light-ASD weights: download from {url} failed ({type(exc).__name__}: {exc}); {hint}") from None
    digest = hashlib.sha256(response.content).hexdigest()
    if digest != sha256:
        raise ValueError(f"Light-ASD weights from {url}: sha256 {digest}, expected {sha256}; not used")
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(response.content)
    os.replace(tmp, cached)
    return cached
