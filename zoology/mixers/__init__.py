"""Mixers: plain ``torch.nn.Module`` classes that mix information across a sequence
(sequence mixers) or across channels (state mixers).

The contract:

* The constructor's keyword arguments are the config: each one typed and defaulted.
  Context arguments (``d_model``, ``layer_idx``, ``n_layers``, ``max_seq_len``,
  ``vocab_size``, and ``shared``: one dict per model through which a layer hands data to
  later layers, as RWKV-7's value residual does) are filled in by the model when the
  constructor declares them (``zoology.mixer_context``).
* ``role = "state"`` marks a per-position (state) mixer; the default is ``"sequence"``.
* ``forward(x: [B, L, D]) -> [B, L, D]``, causal for sequence mixers. For mixers with a
  linear-time method, the training form stays linear in length (chunked scans; no L×L
  matrix).
* ``state_size(seq_len) -> int``: scalars of inference-time state one sequence needs in
  this layer (attention: its KV cache; recurrent mixers: the recurrent state). Its
  docstring states the formula in words (``zoology show mixer`` prints it).
* A mixer that initialises its own weights defines ``reset_parameters()``; the model then
  calls it instead of overwriting them with its generic init.
* A mixer with a recurrent (inference) view defines
  ``recurrent(x: [B, L, D]) -> (y: [B, L, D], state)``: the same computation done one
  position at a time, carrying only the state. ``y`` must equal ``forward(x)`` (to 1e-4 in
  fp32), and ``state`` (a tensor, or tuples/lists/dicts of tensors; a complex scalar counts
  as two) must hold exactly ``state_size(L)`` scalars per sequence after the last position.
  ``zoology.testing.check_mixer`` checks both whenever ``recurrent`` exists.
* A mixer that wants a training objective of its own (a sparsity or load-balancing penalty)
  defines ``auxiliary_loss() -> torch.Tensor``: a finite scalar computed by its most recent
  forward, still in the autograd graph, already weighted as the mixer wants it.
  ``LanguageModel.auxiliary_loss()`` sums it over the layers; the trainer adds the sum to
  the training loss and records its epoch mean as ``train/aux_loss`` (``train/loss`` stays
  the cross-entropy, and evaluation scores the cross-entropy alone). ``check_mixer`` checks
  that it is a finite scalar with a gradient path to a parameter.
"""

from zoology.mixers.attention import Attention, SlidingWindowAttention
from zoology.mixers.based import Based
from zoology.mixers.bigbird import BigBird
from zoology.mixers.conv import BaseConv, ShortConv
from zoology.mixers.delta_net import DeltaNet, GatedDeltaNet
from zoology.mixers.forgetting_attention import ForgettingAttention
from zoology.mixers.gla import GatedLinearAttention
from zoology.mixers.gsa import GatedSlotAttention
from zoology.mixers.h3 import H3
from zoology.mixers.hgrn2 import HGRN2
from zoology.mixers.hyena import Hyena
from zoology.mixers.linear_attention import LinearAttention
from zoology.mixers.mamba import Mamba, Mamba2
from zoology.mixers.nystromformer import Nystromformer
from zoology.mixers.retnet import MultiScaleRetention
from zoology.mixers.rwkv import RWKV4
from zoology.mixers.rwkv6 import RWKV5, RWKV6
from zoology.mixers.rwkv7 import RWKV7
from zoology.mixers.scatterbrain import Scatterbrain
from zoology.mixers.selective import SMA, SelectiveLookups, SigmoidLookups
from zoology.mixers.state import GLU, MLP, Identity
from zoology.mixers.ttt import TTTLinear

# registered by zoology.builtin; one line per mixer class
BUILTIN_MIXERS: list[type] = [
    Attention,
    SlidingWindowAttention,
    LinearAttention,
    Based,
    ShortConv,
    BaseConv,
    Hyena,
    H3,
    GatedLinearAttention,
    MultiScaleRetention,
    DeltaNet,
    GatedDeltaNet,
    Mamba,
    Mamba2,
    RWKV4,
    RWKV7,
    RWKV5,
    RWKV6,
    HGRN2,
    GatedSlotAttention,
    ForgettingAttention,
    BigBird,
    Scatterbrain,
    Nystromformer,
    SelectiveLookups,
    SigmoidLookups,
    SMA,
    TTTLinear,
    MLP,
    GLU,
    Identity,
]
