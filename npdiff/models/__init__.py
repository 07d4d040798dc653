"""Models: the classic segmentation U-Net and diffusers-compatible diffusion U-Nets.

``UNet2DModel`` (and its building blocks) mirror diffusers' constructor
arguments, submodule names and state-dict keys; ``from_pretrained`` /
``save_pretrained`` read and write diffusers' folder layout (safetensors only).
"""

from .attention import Attention
from .classic_unet import ClassicUNet, DoubleConv, Down, OutConv, Up
from .embeddings import TimestepEmbedding, Timesteps, get_timestep_embedding
from .modeling_utils import ModelMixin, register_to_config
from .resnet import Downsample2D, ResnetBlock2D, Upsample2D
from .unet_2d import UNet2DModel, UNet2DOutput
from .unet_blocks import AttnDownBlock2D, AttnUpBlock2D, DownBlock2D, UNetMidBlock2D, UpBlock2D

__all__ = [
    "Attention", "AttnDownBlock2D", "AttnUpBlock2D", "ClassicUNet", "DoubleConv", "Down", "DownBlock2D",
    "Downsample2D", "ModelMixin", "OutConv", "ResnetBlock2D", "TimestepEmbedding", "Timesteps", "UNet2DModel",
    "UNet2DOutput", "UNetMidBlock2D", "Up", "UpBlock2D", "Upsample2D", "get_timestep_embedding",
    "register_to_config",
]
