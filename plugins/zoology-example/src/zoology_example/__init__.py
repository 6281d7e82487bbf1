"""zoology-example: a Zoology plugin with a multi-hop recall task and a GRU mixer."""

from zoology_example.gru import GRU
from zoology_example.multi_hop import MultiHopRecall

__version__ = "0.1.0"
__all__ = ["GRU", "MultiHopRecall"]
