"""The functions under study, as float64-capable torch modules."""

from attnlab.models.attention import AffineHead, SingleHeadAttention, random_low_rank
from attnlab.models.attention_unit import (
    AttentionUnit,
    MultiHeadAttentionLayer,
    ResidualReadout,
    stable_softmax,
)
from attnlab.models.ffn import ReluFFN
from attnlab.models.multihead import MultiHeadRegressor, random_orthogonal_heads
from attnlab.models.precision import is_representable, round_to_bits
from attnlab.models.third_order import ThirdOrderAttention, third_order_attention
from attnlab.models.transformer import OneLayerTransformer

__all__ = ["AffineHead", "SingleHeadAttention", "random_low_rank"]
__all__ += ["AttentionUnit", "MultiHeadAttentionLayer", "ResidualReadout", "stable_softmax"]
__all__ += ["is_representable", "round_to_bits"]
__all__ += ["ThirdOrderAttention", "third_order_attention"]
__all__ += ["OneLayerTransformer", "ReluFFN"]
__all__ += ["MultiHeadRegressor", "random_orthogonal_heads"]
