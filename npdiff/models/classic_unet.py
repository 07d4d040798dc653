"""The original segmentation U-Net (Ronneberger, Fischer & Brox 2015), as it is
usually written in PyTorch (parameter names: ``inc.double_conv.0.weight``,
``down1.maxpool_conv.1.double_conv.0.weight``, ``up1.up.weight``, ``outc.conv.weight``).

Letters: B batch, C channels, H×W image, c_k = base_channels · 2^k, D = depth.

    x_0 = DoubleConv(x)                          (B, c_0, H, W)
    x_k = DoubleConv(MaxPool2×2(x_{k-1}))        (B, c_k, H/2^k, W/2^k),  k = 1 … D
    up:  y = DoubleConv(cat[x_{k-1}, pad(Up(y))]) back to (B, c_0, H, W)
    logits = 1×1 conv(y)                         (B, n_classes, H, W)

DoubleConv is (3×3 conv → BatchNorm → ReLU) twice, the convolutions without bias
(BatchNorm's shift makes it redundant). ``Up`` is either a 2×2 stride-2
transposed convolution that also halves the channels, or parameter-free bilinear
upsampling (align_corners=True); in the bilinear case the deepest level and the
decoder blocks output half the channels (``factor = 2``) so that the concatenated
widths still add up. Unlike the 2015 paper (valid convolutions, cropped skips)
the convolutions are padded, and a decoder map smaller than its skip (odd
input sizes) is zero-padded to match, split evenly between both sides.
"""

from __future__ import annotations

from .. import nn
from ..autograd import Tensor, cat, pad
from .modeling_utils import ModelMixin, register_to_config


class DoubleConv(nn.Module):
    """(conv 3×3 → BN → ReLU) × 2: (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None):
        super().__init__()
        mid = mid_channels or out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            nn.Conv2d(mid, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )

    def forward(self, x):
        return self.double_conv(x)


class Down(nn.Module):
    """2×2 max-pool, then DoubleConv: (B, C_in, H, W) -> (B, C_out, ⌊H/2⌋, ⌊W/2⌋)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))

    def forward(self, x):
        return self.maxpool_conv(x)


class Up(nn.Module):
    """Upsample the deeper map x1, pad it to the skip x2's size, concatenate [x2, x1], DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, bilinear: bool = False):
        super().__init__()
        if bilinear:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x1, x2):
        x1 = self.up(x1)
        dy, dx = x2.shape[2] - x1.shape[2], x2.shape[3] - x1.shape[3]
        if dy or dx:
            x1 = pad(x1, ((0, 0), (0, 0), (dy // 2, dy - dy // 2), (dx // 2, dx - dx // 2)))  # (B, C, H2, W2)
        return self.conv(cat([x2, x1], dim=1))  # (B, C2 + C1, H2, W2)


class OutConv(nn.Module):
    """1×1 convolution to class logits."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x):
        return self.conv(x)


class ClassicUNet(ModelMixin):
    """Segmentation U-Net: (B, n_channels, H, W) -> logits (B, n_classes, H, W).

    ``base_channels=64, depth=4`` is the 2015 network (64 … 1024 channels, four
    poolings); smaller values give the same architecture at toy scale. Submodules
    are ``inc``, ``down1`` … ``down{depth}``, ``up1`` … ``up{depth}``, ``outc``.
    ``save_pretrained`` / ``from_pretrained`` use the same folder layout as the
    diffusion models (config.json + safetensors).
    """

    @register_to_config
    def __init__(self, n_channels: int = 3, n_classes: int = 2, bilinear: bool = False, base_channels: int = 64,
                 depth: int = 4):
        super().__init__()
        if depth < 1 or base_channels < 2 or n_channels < 1 or n_classes < 1:
            raise ValueError(f"ClassicUNet: need depth >= 1, base_channels >= 2, n_channels >= 1, n_classes >= 1; "
                             f"got depth={depth}, base_channels={base_channels}, n_channels={n_channels}, "
                             f"n_classes={n_classes}")
        self.n_channels, self.n_classes, self.bilinear, self.depth = n_channels, n_classes, bilinear, depth
        c = [base_channels * 2**k for k in range(depth + 1)]  # c_0 … c_D
        factor = 2 if bilinear else 1
        self.inc = DoubleConv(n_channels, c[0])
        for k in range(1, depth + 1):
            setattr(self, f"down{k}", Down(c[k - 1], c[k] // factor if k == depth else c[k]))
        for i in range(1, depth + 1):
            k = depth - i  # output level of up{i}
            setattr(self, f"up{i}", Up(c[k + 1], c[k] // factor if k > 0 else c[0], bilinear))
        self.outc = OutConv(c[0], n_classes)

    def forward(self, x):
        x = x if isinstance(x, Tensor) else Tensor(x)
        if x.ndim != 4 or x.shape[1] != self.n_channels:
            raise ValueError(f"ClassicUNet expects input (B, {self.n_channels}, H, W), got shape {x.shape}")
        if min(x.shape[2:]) < 2**self.depth:
            raise ValueError(f"input {x.shape} is smaller than 2^depth = {2 ** self.depth} pixels on a side")
        skips = [self.inc(x)]  # x_0
        for k in range(1, self.depth + 1):
            skips.append(getattr(self, f"down{k}")(skips[-1]))  # x_k
        y = skips.pop()
        for i in range(1, self.depth + 1):
            y = getattr(self, f"up{i}")(y, skips.pop())
        return self.outc(y)
