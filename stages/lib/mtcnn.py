"""MTCNN face detection (Zhang et al. 2016) written here in PyTorch, with the weights that ship inside the
`facenet-pytorch` wheel (MIT; installed without its dependencies: only its three .pt files are read, its
code needs torchvision, which does not import here). The NMS is this module's own for the same reason.

A cascade of three small networks: P-Net proposes 12x12 windows over an image pyramid, R-Net (24x24) and
O-Net (48x48) re-score and refine them; each stage keeps boxes above its threshold, regresses their edges
and suppresses overlaps. Input: an RGB uint8 frame; output: boxes (x1, y1, x2, y2) with their scores.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

INSTALL = "pip install --no-deps facenet-pytorch==2.6.0 (or `make setup-models`)"


def weights_dir() -> Path:
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"MTCNN needs the weights in the facenet-pytorch wheel: {INSTALL}")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, by_min: bool = False) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression (overlap = IoU, or intersection / smaller area)."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        overlap = inter / np.minimum(area[i], area[rest]) if by_min else inter / (area[i] + area[rest] - inter)
        order = rest[overlap <= threshold]
    return np.array(keep, dtype=np.int64)


def _networks():
    import torch
    from torch import nn

    class PNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
            self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
            self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
            self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
            self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

        def forward(self, x):
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
            return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)

    class RNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
            self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
            self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
            self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
            self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

        def forward(self, x):
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.pool2(self.prelu2(self.conv2(x)))
            x = self.prelu3(self.conv3(x)).permute(0, 3, 2, 1).reshape(len(x), -1)   # the weights' layout
            x = self.prelu4(self.dense4(x))
            return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)

    class ONet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
            self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
            self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
            self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
            self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
            self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
            self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

        def forward(self, x):
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.pool2(self.prelu2(self.conv2(x)))
            x = self.pool3(self.prelu3(self.conv3(x)))
            x = self.prelu4(self.conv4(x)).permute(0, 3, 2, 1).reshape(len(x), -1)
            x = self.prelu5(self.dense5(x))
            return self.dense6_2(x), torch.softmax(self.dense6_1(x), dim=1)

    return PNet, RNet, ONet


class MTCNN:
    """`detector(frames)`: the faces of each frame of a (N, H, W, 3) RGB uint8 stack, as lists of
    (x1, y1, x2, y2) boxes. Frames go through each network together, `batch` at a time (one P-Net call per
    pyramid scale, one R-Net and one O-Net call for all candidates), not one frame at a time."""

    def __init__(self, min_size: int = 20, thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
                 factor: float = 0.709, batch: int = 32, device: str = "cpu") -> None:
        import torch

        folder = weights_dir()
        self.nets = []
        for cls, name in zip(_networks(), ("pnet", "rnet", "onet")):
            net = cls()
            net.load_state_dict(torch.load(folder / f"{name}.pt", map_location="cpu", weights_only=True))
            self.nets.append(net.eval().to(device))
        self.min_size, self.thresholds, self.factor = min_size, thresholds, factor
        self.batch, self.device = batch, device

    def __call__(self, frames: np.ndarray) -> list[list[tuple[int, int, int, int]]]:
        return [[tuple(int(round(v)) for v in box[:4]) for box in boxes] for boxes in self.detect(frames)]

    def detect(self, frames: np.ndarray) -> list[np.ndarray]:
        """Per frame of an (N, H, W, 3) RGB uint8 stack: (n, 5) x1, y1, x2, y2, score of its faces."""
        out = []
        for first in range(0, len(frames), self.batch):
            out += self._detect(frames[first:first + self.batch])
        return out

    def _detect(self, frames: np.ndarray) -> list[np.ndarray]:
        import torch
        import torch.nn.functional as F

        pnet, rnet, onet = self.nets
        n, h, w = frames.shape[:3]
        images = torch.from_numpy(np.require(frames, np.uint8, ['C', 'W'])).to(self.device).permute(0, 3, 1, 2).float()
        found: list[list[np.ndarray]] = [[] for _ in range(n)]
        with torch.no_grad():
            scale = 12.0 / self.min_size
            side = min(h, w) * scale
            while side >= 12:
                size = (int(h * scale + 1), int(w * scale + 1))
                reg, prob = pnet((F.interpolate(images, size=size, mode="area") - 127.5) * 0.0078125)
                reg, prob = reg.cpu().numpy(), prob[:, 1].cpu().numpy()
                for i in range(n):
                    found[i].append(self._proposals(reg[i], prob[i], scale, self.thresholds[0]))
                scale *= self.factor
                side *= self.factor
            boxes = [self._pyramid_boxes(np.concatenate(f) if f else np.zeros((0, 9))) for f in found]
            for net, size, threshold in ((rnet, 24, self.thresholds[1]), (onet, 48, self.thresholds[2])):
                if not any(len(b) for b in boxes):
                    break
                crops = torch.cat([self._crops(images[i:i + 1], b, size) for i, b in enumerate(boxes) if len(b)])
                reg, prob = net(crops)
                reg, score = reg.cpu().numpy(), prob[:, 1].cpu().numpy()
                ends = np.cumsum([len(b) for b in boxes])
                boxes = [self._refine(b, reg[end - len(b):end], score[end - len(b):end], size, threshold)
                         for b, end in zip(boxes, ends)]
        for b in boxes:
            b[:, [0, 2]] = b[:, [0, 2]].clip(0, w)
            b[:, [1, 3]] = b[:, [1, 3]].clip(0, h)
        return [b[:, :5] for b in boxes]

    def _pyramid_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """P-Net's proposals of one frame over all scales: merged, moved by their regression, squared."""
        if not len(boxes):
            return np.zeros((0, 5))
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
        span = boxes[:, 2:4] - boxes[:, 0:2]
        boxes = np.column_stack([boxes[:, 0:2] + boxes[:, 5:7] * span, boxes[:, 2:4] + boxes[:, 7:9] * span,
                                 boxes[:, 4]])
        return self._square(boxes)

    def _refine(self, boxes: np.ndarray, reg: np.ndarray, score: np.ndarray, size: int,
                threshold: float) -> np.ndarray:
        """One frame's boxes after R-Net (size 24) or O-Net (48): kept above the threshold, merged, moved."""
        keep = score > threshold
        boxes, reg, score = boxes[keep], reg[keep], score[keep]
        if not len(boxes):
            return np.zeros((0, 5))
        boxes[:, 4] = score
        if size == 24:
            kept = nms(boxes[:, :4], score, 0.7)
            boxes, reg = boxes[kept], reg[kept]
        span = boxes[:, 2:4] - boxes[:, 0:2] + 1
        boxes[:, 0:2] += reg[:, 0:2] * span
        boxes[:, 2:4] += reg[:, 2:4] * span
        if size == 24:
            return self._square(boxes)
        return boxes[nms(boxes[:, :4], boxes[:, 4], 0.7, by_min=True)]

    @staticmethod
    def _proposals(reg: np.ndarray, prob: np.ndarray, scale: float, threshold: float) -> np.ndarray:
        ys, xs = np.nonzero(prob >= threshold)
        if not len(ys):
            return np.zeros((0, 9))
        score = prob[ys, xs]
        q1x, q1y = np.floor((2 * xs + 1) / scale), np.floor((2 * ys + 1) / scale)
        q2x, q2y = np.floor((2 * xs + 12) / scale), np.floor((2 * ys + 12) / scale)
        boxes = np.column_stack([q1x, q1y, q2x, q2y, score, reg[:, ys, xs].T])
        return boxes[nms(boxes[:, :4], score, 0.5)]

    @staticmethod
    def _square(boxes: np.ndarray) -> np.ndarray:
        out = boxes.copy()
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        side = np.maximum(w, h)
        out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
        out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
        out[:, 2:4] = out[:, 0:2] + side[:, None]
        return out

    @staticmethod
    def _crops(image, boxes: np.ndarray, size: int):
        import torch
        import torch.nn.functional as F

        _, _, h, w = image.shape
        crops = []
        for x1, y1, x2, y2 in boxes[:, :4].astype(int):
            x1, y1 = max(x1, 0), max(y1, 0)
            x2, y2 = min(max(x2, x1 + 1), w), min(max(y2, y1 + 1), h)
            crops.append(F.interpolate(image[:, :, y1:y2, x1:x2], size=(size, size), mode="area"))
        return (torch.cat(crops) - 127.5) * 0.0078125
