"""Input-dependent sparse attention: the Zoology paper's own proposal (Arora et al. 2023,
arXiv 2312.04927, "input-dependent sparse attention"; upstream ``zoology/mixers/selective.py``,
classes ``SelectiveLookups``, ``SigmoidLookups`` and ``SMA``).

Causal softmax attention whose output is kept only at the positions a learned selection
picks, so that at inference only a few queries need to attend (MQAR's lookups are a few
positions per sequence). For an input x [B, L, D]:

    o_t = W_o · MHA(x)_t                causal multi-head softmax attention, keys j ≤ t
    r_t = selection logit of x_t        a scalar per position, from x_t alone
    g_t ∈ [0, 1]                        the gate, from r (causal; per mixer, below)
    training:    y_t = g_t · o_t
    evaluation:  y_t = s_t · g_t · o_t,  s_t = 1 if r_t is among the n largest of r_0..r_t
                                          (ties go to the earlier position), else 0

with n = ``n_lookups``, or ⌈√max_seq_len⌉ when it is 0. The three mixers differ in the gate:

    selective_lookups   r_t = w·x_t + b        g_t = exp(r_t) / Σ_{j≤t} exp(r_j)   (softmax over the prefix)
    sigmoid_lookups     r_t = w·x_t            g_t = σ(r_t); auxiliary loss λ·relu(mean_{b,t} g_t − n/L)
    sma                 z_t = W x_t + c ∈ R²   g_t = softmax(z_t / τ)[1] = σ(r_t),  r_t = (z_t1 − z_t0) / τ,
                                               τ learned, starting at α·√D

The auxiliary loss of ``sigmoid_lookups`` (``auxiliary_loss()``, see the mixer contract)
pushes the mean gate down to the budget's share n/L of the positions, so that the hard
selection at evaluation drops little. This reference computes attention at every position
and zeroes the unselected outputs; an efficient implementation computes only the selected
queries (each still attends to every earlier key, so the KV cache stays whole).

Differences from upstream, all deliberate:

- Causal selection. Upstream evaluates with the top ⌈√L⌉ (``SigmoidLookups``: or
  ``n_lookups``) positions of the *whole* sequence, and ``SelectiveLookups`` normalises its softmax over the whole sequence in
  training as well: both let position t see the scores of later positions. Here the
  top-n is taken over the prefix r_0..r_t and the softmax over positions ≤ t. The price:
  the number of selected positions is at least min(n, L) but not capped at n (about
  n·(1 + ln(L/n)) for scores in random order, every position for rising scores).
- The budget n is fixed per model (``n_lookups`` or ⌈√max_seq_len⌉) rather than ⌈√L⌉ of
  each batch, so a position's output does not depend on how long the sequence will get.
  The auxiliary loss's target n/L uses the batch's L, as upstream's.
- Upstream's mixers return x + g·o: the (normalised) input rides along inside the mixer
  and its block adds the residual again. Here the block's residual alone carries x, so an
  unselected position's mixer output is exactly zero.
- Upstream's evaluation writes into its input tensor in place (``scatter_add_``) and its
  forward logs selection histograms to W&B; neither here. Upstream's trainer logs the
  auxiliary loss inside ``train/loss``; here ``train/loss`` is the cross-entropy and the
  auxiliary loss is ``train/aux_loss``.
- ``sma``'s temperature τ is unconstrained, as upstream's (its sign may flip in training).
- ``hard_select = false`` (not upstream) evaluates with the soft gate of training.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoology.errors import FieldError
from zoology.mixers.attention import _QKV


class _SparseLookups(_QKV):
    """Causal attention gated per position; subclasses define the selection logit and gate."""

    def __init__(self, d_model: int, max_seq_len: int, num_heads: int, dropout: float, n_lookups: int,
                 hard_select: bool) -> None:
        super().__init__(d_model, num_heads, 0, dropout)
        if n_lookups < 0:
            raise FieldError("n_lookups", f"must be >= 0 (0 means ceil(sqrt(max_seq_len))), got {n_lookups}")
        self.n_lookups = n_lookups or math.ceil(math.sqrt(max_seq_len))  # the budget n
        self.hard_select = hard_select

    # -- per mixer ---------------------------------------------------------------------------

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, L, D] → selection logits r [B, L] (float32), each from its own position."""
        raise NotImplementedError

    def gates(self, r: torch.Tensor) -> torch.Tensor:
        """r [B, L] → gates g [B, L] in [0, 1], causal in t."""
        return torch.sigmoid(r)

    def gate_step(self, r_t: torch.Tensor, carry: Any) -> tuple[torch.Tensor, Any]:
        """One position of :meth:`gates`: r_t [B] and the carried state → g_t [B], new state."""
        return torch.sigmoid(r_t), carry

    def initial_carry(self, batch: int, device: torch.device) -> Any:
        return None

    def on_gates(self, g: torch.Tensor) -> None:
        """Called by forward with the soft gates g [B, L] (auxiliary losses)."""

    # -- shared ------------------------------------------------------------------------------

    def _hard(self) -> bool:
        return self.hard_select and not self.training

    def selected(self, r: torch.Tensor) -> torch.Tensor:
        """s [B, L] bool: r_t is among the n largest of r_0..r_t (earlier positions win ties),
        i.e. fewer than n earlier positions j have r_j ≥ r_t."""
        l = r.shape[1]
        ahead = r[:, None, :] >= r[:, :, None]  # [B, L(t), L(j)]: r_j ≥ r_t
        earlier = torch.ones(l, l, dtype=torch.bool, device=r.device).tril(-1)  # j < t
        return (ahead & earlier).sum(-1) < self.n_lookups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x)  # each [B, H, L, Dh]
        o = self.out(F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0))  # [B, L, D]
        r = self.logits(x)  # [B, L]
        g = self.gates(r)  # [B, L]
        self.on_gates(g)
        if self._hard():
            g = g * self.selected(r)
        return o * g[..., None].to(o.dtype)

    def state_size(self, seq_len: int) -> int:
        """KV cache: a key and a value of d_model scalars for every position (a selected query
        attends to all earlier keys), 2·d_model·seq_len, plus, with hard_select, the n largest
        selection logits so far, min(n, seq_len), for the causal top-n."""
        return 2 * self.d_model * seq_len + (min(self.n_lookups, seq_len) if self.hard_select else 0)

    def recurrent(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Position by position with a KV cache and the running top-n logits: the inference
        form, equal to forward in evaluation mode (in training mode it keeps every position,
        without attention dropout). Returns the output and the final state: keys and values
        [B, H, L, Dh], the n largest logits [B, min(n, L)] (with hard_select), and what the
        gate carries (selective_lookups: its running log-normaliser [B])."""
        q, k, v = self.qkv(x)  # [B, H, L, Dh]; projections act per position
        r = self.logits(x)  # [B, L]
        b, _, l, dh = q.shape
        hard = self._hard()
        carry = self.initial_carry(b, x.device)
        top = r.new_empty(b, 0)  # the n largest logits of the positions so far
        outs, gs = [], []
        for t in range(l):
            att = (q[:, :, t: t + 1] @ k[:, :, : t + 1].transpose(-1, -2)) * dh**-0.5  # [B, H, 1, t+1]
            outs.append(att.softmax(-1) @ v[:, :, : t + 1])  # [B, H, 1, Dh]
            g_t, carry = self.gate_step(r[:, t], carry)  # [B]
            if hard:
                g_t = g_t * ((top >= r[:, t: t + 1]).sum(-1) < self.n_lookups)
                top = torch.cat([top, r[:, t: t + 1]], dim=1)
                if top.shape[1] > self.n_lookups:
                    top = top.topk(self.n_lookups, dim=1).values
            gs.append(g_t)
        o = self.out(torch.cat(outs, dim=2))  # [B, L, D]
        state = {"keys": k, "values": v, **({"top_logits": top} if hard else {}), **self.carry_state(carry)}
        return o * torch.stack(gs, dim=1)[..., None], state

    def carry_state(self, carry: Any) -> dict[str, torch.Tensor]:
        return {}


class SelectiveLookups(_SparseLookups):
    """Input-dependent sparse attention with a softmax-over-positions selection (upstream's
    ``SelectiveLookups``, made causal): causal attention whose output at t is scaled by
    exp(r_t) / Σ_{j≤t} exp(r_j), and at evaluation kept only where r_t is among the n
    largest logits so far. See the module docstring for the math and upstream differences.

    Args:
        num_heads: attention heads; d_model must be divisible by it
        dropout: dropout on the attention weights while training
        n_lookups: the selection budget n at evaluation; 0 means ceil(sqrt(max_seq_len))
        hard_select: at evaluation keep only the causal top-n positions (false: the soft gate, as in training)
    """

    name = "selective_lookups"

    def __init__(self, d_model: int, max_seq_len: int, num_heads: int = 1, dropout: float = 0.0,
                 n_lookups: int = 0, hard_select: bool = True) -> None:
        super().__init__(d_model, max_seq_len, num_heads, dropout, n_lookups, hard_select)
        self.selecting = nn.Linear(d_model, 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.selecting(x).squeeze(-1).float()  # [B, L]

    def gates(self, r: torch.Tensor) -> torch.Tensor:
        return torch.exp(r - torch.logcumsumexp(r, dim=1))  # softmax of r_t over positions ≤ t

    def initial_carry(self, batch: int, device: torch.device) -> torch.Tensor:
        return torch.full((batch,), -math.inf, device=device)  # log Σ_{j<t} exp(r_j): empty sum

    def gate_step(self, r_t: torch.Tensor, carry: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lse = torch.logaddexp(carry, r_t)  # [B]
        return torch.exp(r_t - lse), lse

    def carry_state(self, carry: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"log_normaliser": carry}

    def state_size(self, seq_len: int) -> int:
        """KV cache: a key and a value of d_model scalars for every position (a selected query
        attends to all earlier keys), 2·d_model·seq_len; plus one running log-normaliser of
        the prefix softmax; plus, with hard_select, the n largest selection logits so far,
        min(n, seq_len)."""
        return super().state_size(seq_len) + 1


class SigmoidLookups(_SparseLookups):
    """Input-dependent sparse attention with a sigmoid selection and a sparsity penalty
    (upstream's ``SigmoidLookups``, the paper's learned selection): causal attention whose
    output at t is scaled by σ(w·x_t); an auxiliary loss λ·relu(mean g − n/L) pushes the
    mean gate down to the budget; at evaluation only positions whose logit is among the n
    largest so far are kept. See the module docstring for the math and upstream differences.

    Args:
        num_heads: attention heads; d_model must be divisible by it
        dropout: dropout on the attention weights while training
        n_lookups: the selection budget n (evaluation top-n and the penalty's target n/L); 0 means ceil(sqrt(max_seq_len))
        selection_penalty: weight λ of the auxiliary loss λ·relu(mean gate − n/L)
        hard_select: at evaluation keep only the causal top-n positions (false: the soft gate, as in training)
    """

    name = "sigmoid_lookups"

    def __init__(self, d_model: int, max_seq_len: int, num_heads: int = 1, dropout: float = 0.0,
                 n_lookups: int = 0, selection_penalty: float = 0.001, hard_select: bool = True) -> None:
        super().__init__(d_model, max_seq_len, num_heads, dropout, n_lookups, hard_select)
        if not (math.isfinite(selection_penalty) and selection_penalty >= 0):
            raise FieldError("selection_penalty", f"must be finite and >= 0, got {selection_penalty}")
        self.selection_penalty = selection_penalty
        self.selecting = nn.Linear(d_model, 1, bias=False)
        self._aux_loss: torch.Tensor | None = None

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.selecting(x).squeeze(-1).float()  # [B, L]

    def on_gates(self, g: torch.Tensor) -> None:
        density = self.n_lookups / g.shape[1]  # the share of positions the budget allows
        self._aux_loss = self.selection_penalty * F.relu(g.mean() - density)

    def auxiliary_loss(self) -> torch.Tensor:
        """λ·relu(mean gate − n/L) of the most recent forward (mean over batch and positions)."""
        if self._aux_loss is None:
            raise RuntimeError("sigmoid_lookups: auxiliary_loss() is computed by forward; call forward first")
        return self._aux_loss


class SMA(_SparseLookups):
    """Input-dependent sparse attention with a two-way softmax selection at a learned
    temperature (upstream's ``SMA``): causal attention whose output at t is scaled by
    softmax(z_t / τ)[1], z_t = W x_t + c ∈ R², τ learned from α·√d_model; at evaluation only
    positions whose gate logit is among the n largest so far are kept. See the module
    docstring for the math and upstream differences.

    Args:
        num_heads: attention heads; d_model must be divisible by it
        dropout: dropout on the attention weights while training
        alpha: the temperature starts at alpha·sqrt(d_model)
        n_lookups: the selection budget n at evaluation; 0 means ceil(sqrt(max_seq_len))
        hard_select: at evaluation keep only the causal top-n positions (false: the soft gate, as in training)
    """

    name = "sma"

    def __init__(self, d_model: int, max_seq_len: int, num_heads: int = 1, dropout: float = 0.0,
                 alpha: float = 0.3, n_lookups: int = 0, hard_select: bool = True) -> None:
        super().__init__(d_model, max_seq_len, num_heads, dropout, n_lookups, hard_select)
        if not (math.isfinite(alpha) and alpha > 0):
            raise FieldError("alpha", f"must be finite and > 0, got {alpha}")
        self.selection_proj = nn.Linear(d_model, 2)
        self.temperature = nn.Parameter(torch.full((1,), alpha * math.sqrt(d_model)))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        z = self.selection_proj(x).float()  # [B, L, 2]
        return (z[..., 1] - z[..., 0]) / self.temperature  # softmax(z/τ)[1] = σ(this)
