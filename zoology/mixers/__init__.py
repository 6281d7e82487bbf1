"""Mixers: plain ``torch.nn.Module`` classes that mix information across a sequence
(sequence mixers) or across channels (state mixers).

The contract:

* The constructor's keyword arguments are the config: each one typed and defaulted.
  Context arguments (``d_model``, ``layer_idx``, ``n_layers``, ``max_seq_len``,
  ``vocab_size``) are filled in by the model when the constructor declares them.
* ``forward(x: [B, L, D]) -> [B, L, D]``, causal for sequence mixers.
* ``state_size(seq_len) -> int``: scalars of inference-time state one sequence needs in
  this layer (attention: its KV cache; recurrent mixers: the recurrent state).
* A mixer that initialises its own weights defines ``reset_parameters()``; the model then
  calls it instead of overwriting them with its generic init.
"""

from zoology.mixers.attention import Attention
from zoology.mixers.state import GLU, MLP, Identity

# registered by zoology.builtin; one line per mixer class
BUILTIN_MIXERS: list[type] = [
    Attention,
    MLP,
    GLU,
    Identity,
]
