"""Models: the classic segmentation U-Net, diffusers-compatible diffusion U-Nets, ControlNet, DiT, the VAE, CLIP.

``UNet2DModel``, ``UNet2DConditionModel``, ``AutoencoderKL`` (and their building blocks) mirror
diffusers' constructor arguments, submodule names and state-dict keys; ``CLIPTextModel`` mirrors
transformers'. ``from_pretrained`` / ``save_pretrained`` read and write their folder
layouts (safetensors only). ``CLIPTokenizer`` reads CLIP's vocab.json + merges.txt.
"""

from .activations import GEGLU, GELU
from .attention import Attention, BasicTransformerBlock, FeedForward
from .autoencoder_kl import AutoencoderKL, AutoencoderKLOutput, DecoderOutput
from .classifier import EncoderUNetModel
from .clip import CLIPImageEncoder, CLIPModel, contrastive_loss, zero_shot_classify
from .clip_text import CLIPTextModel
from .clip_tokenizer import CLIPTokenizer, build_clip_vocab
from .controlnet import ControlNetConditioningEmbedding, ControlNetModel, ControlNetOutput
from .classic_unet import ClassicUNet, DoubleConv, Down, OutConv, Up
from .dit import DiTTransformer2DModel, PatchEmbed
from .embeddings import (CombinedTimestepLabelEmbeddings, LabelEmbedding, TimestepEmbedding, Timesteps,
                         get_timestep_embedding)
from .modeling_utils import ModelMixin, register_to_config
from .normalization import AdaLayerNormZero
from .resnet import Downsample2D, ResnetBlock2D, Upsample2D
from .transformer_2d import Transformer2DModel
from .unet_2d import UNet2DModel, UNet2DOutput
from .unet_2d_condition import UNet2DConditionModel, UNet2DConditionOutput
from .unet_blocks import (AttnDownBlock2D, AttnUpBlock2D, CrossAttnDownBlock2D, CrossAttnUpBlock2D, DownBlock2D,
                          UNetMidBlock2D, UNetMidBlock2DCrossAttn, UpBlock2D)
from .vae import Decoder, DiagonalGaussianDistribution, DownEncoderBlock2D, Encoder, UpDecoderBlock2D

__all__ = [
    "AdaLayerNormZero", "Attention", "AttnDownBlock2D", "AttnUpBlock2D", "AutoencoderKL", "AutoencoderKLOutput",
    "BasicTransformerBlock", "CLIPImageEncoder", "CLIPModel", "CLIPTextModel", "CLIPTokenizer", "ClassicUNet",
    "CombinedTimestepLabelEmbeddings", "ControlNetConditioningEmbedding", "ControlNetModel",
    "ControlNetOutput", "CrossAttnDownBlock2D", "CrossAttnUpBlock2D", "Decoder", "DecoderOutput",
    "DiTTransformer2DModel", "DiagonalGaussianDistribution", "DoubleConv", "Down", "DownBlock2D",
    "DownEncoderBlock2D", "Downsample2D", "Encoder", "EncoderUNetModel", "FeedForward", "GEGLU", "GELU",
    "LabelEmbedding", "ModelMixin", "OutConv", "PatchEmbed", "ResnetBlock2D", "TimestepEmbedding", "Timesteps",
    "Transformer2DModel", "UNet2DConditionModel", "UNet2DConditionOutput", "UNet2DModel", "UNet2DOutput",
    "UNetMidBlock2D", "UNetMidBlock2DCrossAttn", "Up", "UpBlock2D", "UpDecoderBlock2D", "Upsample2D",
    "build_clip_vocab", "contrastive_loss", "get_timestep_embedding", "register_to_config", "zero_shot_classify",
]
