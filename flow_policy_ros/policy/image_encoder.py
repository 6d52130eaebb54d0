"""The camera encoder: uint8 RGB frames -> a small embedding, trained from scratch with the policy.

Architecture (Diffusion Policy / robomimic style, shrunk for a 2-core CPU):

    uint8 (B, H, W, 3) --/255, -0.5--> float (B, 3, H, W)
      -> [training only] random shift: replicate-pad ``shift_pad`` pixels, random crop back to H x W (DrQ)
      -> conv 5x5 /2 -> ReLU -> conv 3x3 /2 -> ReLU -> conv 3x3 -> ReLU     (channels ``channels``)
      -> 1x1 conv to K keypoint maps -> spatial softmax -> K expected (x, y) in [-1, 1]   (B, 2K)
      -> linear -> embedding (B, embed_dim)

Why spatial-softmax keypoints: the task needs WHERE things are (the red cube), not what a global
pool would average away; a soft-argmax per map gives sub-pixel coordinates even after two
stride-2 convolutions, and its output is a handful of numbers that an MLP condition encoder
takes directly. The uint8 -> float normalisation is the first op of the module, so the ONNX
graph takes raw camera bytes (``image_<camera>`` uint8 [B, H, W, 3]).

Cost (96 x 96 input, channels (8, 16, 32), 16 keypoints): about 5 M multiply-adds per frame,
~0.3 ms in ONNX Runtime on one core; it runs once per decision (the exported graph computes the
embedding before the unrolled solver loop; both CFG branches share it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """DrQ augmentation: replicate-pad (B, C, H, W) by ``pad`` pixels and crop a random H x W window
    per sample (integer shifts in [-pad, pad] on each axis). ``pad`` = 0 returns the input."""
    if pad <= 0:
        return images
    batch, channels, height, width = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    shifts = torch.randint(0, 2 * pad + 1, (batch, 2), generator=generator, device=generator.device if generator else None)
    shifts = shifts.to(images.device)
    rows = torch.arange(height, device=images.device)[None, :] + shifts[:, 0:1]  # (B, H)
    cols = torch.arange(width, device=images.device)[None, :] + shifts[:, 1:2]  # (B, W)
    batch_idx = torch.arange(batch, device=images.device)[:, None, None]
    # gather (B, C, H, W) from padded (B, C, H+2p, W+2p)
    out = padded.permute(0, 2, 3, 1)[batch_idx, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


class SpatialSoftmax(nn.Module):
    """Feature maps (B, C, h, w) -> K keypoints (B, 2K): per map the softmax-weighted mean (x, y) in [-1, 1].

    A 1x1 convolution first maps C channels to K keypoint maps; the softmax temperature is learned.
    """

    def __init__(self, channels: int, keypoints: int, height: int, width: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(channels, keypoints, kernel_size=1)
        self.log_temperature = nn.Parameter(torch.zeros(1))
        ys, xs = torch.meshgrid(torch.linspace(-1.0, 1.0, height), torch.linspace(-1.0, 1.0, width), indexing="ij")
        self.register_buffer("grid", torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1), persistent=False)  # (hw, 2)
        self.keypoints = keypoints

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        logits = self.project(maps).flatten(2) / torch.exp(self.log_temperature)  # (B, K, hw)
        attention = torch.softmax(logits, dim=-1)
        return torch.matmul(attention, self.grid).flatten(1)  # (B, K * 2)


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class ImageEncoder(nn.Module):
    """uint8 RGB frames (B, H, W, 3) -> embedding (B, embed_dim); see the module docstring.

    Args:
        height, width: the frame size the model takes (the feature's ``image_shape``).
        channels: output channels of the three convolutions.
        keypoints: K, spatial-softmax keypoints (2K coordinates).
        embed_dim: size of the embedding.
        shift_pad: random-shift augmentation in pixels, applied in :meth:`forward` only when
            ``augment`` is True (training); 0 = none.
    """

    def __init__(self, height: int, width: int, channels: tuple[int, int, int] = (8, 16, 32), keypoints: int = 16,
                 embed_dim: int = 64, shift_pad: int = 4) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.height, self.width, self.shift_pad = height, width, shift_pad
        self.convs = nn.Sequential(
            nn.Conv2d(3, c1, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(c2, c3, 3, stride=1, padding=1), nn.ReLU(),
        )
        h = _conv_out(_conv_out(height, 5, 2, 2), 3, 2, 1)
        w = _conv_out(_conv_out(width, 5, 2, 2), 3, 2, 1)
        self.keypoints = SpatialSoftmax(c3, keypoints, h, w)
        self.out = nn.Linear(2 * keypoints, embed_dim)
        self.embed_dim = embed_dim

    def forward(self, frames: torch.Tensor, augment: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """frames (B, H, W, 3) uint8 (or float in [0, 255]) -> (B, embed_dim)."""
        x = frames.permute(0, 3, 1, 2).to(torch.float32) * (1.0 / 255.0) - 0.5
        if augment:
            x = random_shift(x, self.shift_pad, generator)
        return self.out(self.keypoints(self.convs(x)))
