"""Neural-network layers with PyTorch's names, arguments and state-dict keys."""

from . import functional, init
from .modules.activation import GELU, Dropout, ReLU, Sigmoid, SiLU, Softmax
from .modules.container import ModuleDict, ModuleList, Sequential
from .modules.conv import Conv2d, ConvTranspose2d
from .modules.linear import Embedding, Identity, Linear
from .modules.module import Module, Parameter
from .modules.norm import BatchNorm2d, GroupNorm, LayerNorm, norm_act
from .modules.pooling import AvgPool2d, MaxPool2d, Upsample
