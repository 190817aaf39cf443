"""Learning targets from queries. Every extractor takes an Oracle and returns an Extraction."""

from attnlab.extract.ffn import relu_ffn
from attnlab.extract.multihead import multi_head, orthogonal_heads
from attnlab.extract.noisy import noisy_single_head
from attnlab.extract.result import Extraction, measure_fidelity
from attnlab.extract.single_head import single_head
from attnlab.extract.transformer import antisymmetric_oracle, one_layer_transformer

__all__ = ["Extraction", "measure_fidelity", "single_head"]
__all__ += ["multi_head", "orthogonal_heads"]
__all__ += ["noisy_single_head", "relu_ffn"]
__all__ += ["antisymmetric_oracle", "one_layer_transformer"]
