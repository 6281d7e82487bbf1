"""TTT-Linear (Sun et al. 2024, "Learning to (Learn at Test Time)", arXiv 2407.04620; the
authors' PyTorch reference test-time-training/ttt-lm-pytorch, which upstream Zoology's
``mixers/ttt.py`` copies).

The hidden state is itself a model: per head, a linear map ``f(x) = x + LN(x W + b)``
(W [f, f], b [f], LN a layer norm with learnable γ, β; f = head_dim). Every token is a
training example for it. With queries q_t, keys k_t and values v_t (projections of the
input x_t; q, k rotated by RoPE at position t mod K), the self-supervised loss of token t
asks f to reconstruct the value from the key:

    ℓ_t(W, b) = ½ ‖LN(k_t W + b) - (v_t - k_t)‖²          (f(k_t) ≈ v_t)

and the state is trained by gradient descent on it, in mini-batches of K tokens: every
gradient in a mini-batch is taken at the weights (W₀, b₀) the mini-batch started from, and
token i (0-based position in its mini-batch, t the token) reads with

    G_t = Σ_{j ≤ t in this mini-batch} θ_j ∇ℓ_j(W₀, b₀)     (accumulated, lr-weighted)
    (W_t, b_t) = (W₀, b₀) - η_i G_t
    o_t = q_t + LN(q_t W_t + b_t)

where θ_j = base_lr · sigmoid(w_hᵀ x_j + c_h) / head_dim is a learned, data-dependent inner
learning rate per head and token, and η_i = max(1/(i+1) + a_i, 0) a learned step size per
position in the mini-batch (1/(i+1): the mean of the gradients seen so far). The last
token's weights start the next mini-batch. K = 1 is plain online gradient descent.

The gradient of ℓ with respect to Z = k W + b is explicit (the layer norm's backward fused
with the L2 loss, ``ln_l2_grad``); then ∇_W ℓ_j = k_jᵀ g_j and ∇_b ℓ_j = g_j. So the
read-out of a whole mini-batch is one masked product, the *dual form* (training):

    o_i = q_i + LN(q_i W₀ + b₀ - η_i Σ_{j ≤ i} (q_i·k_j + 1) θ_j g_j)

and ``recurrent`` runs the *primal form* token by token, carrying W₀, b₀ and the
accumulated G. Outputs of all heads go through a layer norm over d_model and an output
projection.

Follows the reference's TTT-Linear layer at its defaults (ttt_base_lr 1, mini-batch 16,
RoPE θ 10⁴ on positions modulo the mini-batch, inner LN and output LN eps 1e-6, W ~ N(0,
0.02), b = 0, lr gate weight N(0, 0.02) and bias 0, no projection biases), with its
share_qk (one q/k projection, then a causal convolution each) and use_gate (output gated
by gelu(g_proj x)) options, off by default as there. Differences: RoPE rotates half-split
channel pairs where the reference rotates adjacent ones (a fixed relabelling of the head
channels, so the same function class); the reference's pre_conv (a convolution in the
block, outside the layer) and TTT-MLP are left out; the inner TTT computation runs in fp32
even under autocast. Upstream Zoology's ``state_size`` counts W and b only; a decoder in
the middle of a mini-batch also needs the accumulated gradients (its cache keeps both).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoology.errors import FieldError
from zoology.mixers._ops import ShortConvolution, pad_to_multiple, rotary

EPS = 1e-6  # the reference's epsilon of the inner and the output layer norms


def _normalize(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer norm without affine over the last dim: (ẑ = (z - mean)/σ, σ)."""
    mu = z.mean(-1, keepdim=True)
    std = (z.var(-1, unbiased=False, keepdim=True) + EPS).sqrt()
    return (z - mu) / std, std


def ln_l2_grad(z: torch.Tensor, target: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """∂/∂z of ½‖γ ⊙ ẑ + β - target‖² (ẑ the layer norm of z over the last dim), in closed form:
    with h = γ ⊙ (γ ⊙ ẑ + β - target), the gradient is (h - mean(h) - ẑ · mean(h ⊙ ẑ)) / σ."""
    z_hat, std = _normalize(z)
    h = gamma * (gamma * z_hat + beta - target)  # ∂ℓ/∂ẑ
    return (h - h.mean(-1, keepdim=True) - z_hat * (h * z_hat).mean(-1, keepdim=True)) / std


class TTTLinear(nn.Module):
    """TTT-Linear: per head, a linear model (with a layer norm and residual) trained on the
    sequence as it is read, one gradient step per mini-batch of tokens on a reconstruction
    loss; its weights are the recurrent state.

    Args:
        num_heads: heads; d_model must be divisible by it (head_dim = d_model / num_heads)
        mini_batch_size: K, tokens per inner gradient step (1: a step after every token)
        base_lr: scale of the learned inner learning rate, base_lr · sigmoid(·) / head_dim
        rope_theta: base of the rotary embedding of q and k (positions modulo K)
        share_qk: one projection for q and k, then a causal depthwise convolution each (the
            reference's option for its Mamba backbone; gives q and k the preceding tokens)
        conv_kernel: length of those convolutions
        use_gate: gate the output by gelu(g_proj x) (the reference's other Mamba-backbone option)
    """

    name = "ttt_linear"

    def __init__(
        self, d_model: int, num_heads: int = 4, mini_batch_size: int = 16, base_lr: float = 1.0,
        rope_theta: float = 10000.0, share_qk: bool = False, conv_kernel: int = 4, use_gate: bool = False,
    ) -> None:
        super().__init__()
        if num_heads < 1 or d_model % num_heads:
            raise FieldError("num_heads", f"must be >= 1 and divide d_model={d_model}, got {num_heads}")
        if mini_batch_size < 1:
            raise FieldError("mini_batch_size", f"must be >= 1, got {mini_batch_size}")
        if base_lr <= 0:
            raise FieldError("base_lr", f"must be > 0, got {base_lr}")
        if rope_theta <= 0:
            raise FieldError("rope_theta", f"must be > 0, got {rope_theta}")
        if conv_kernel < 1:
            raise FieldError("conv_kernel", f"must be >= 1, got {conv_kernel}")
        self.d_model, self.num_heads, self.head_dim = d_model, num_heads, d_model // num_heads
        self.mini_batch_size, self.base_lr, self.rope_theta = mini_batch_size, base_lr, rope_theta
        self.share_qk, self.conv_kernel, self.use_gate = share_qk, conv_kernel, use_gate
        h, f, k = num_heads, self.head_dim, mini_batch_size
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        if share_qk:  # both convolutions read q_proj's output
            self.q_conv = ShortConvolution(d_model, conv_kernel)
            self.k_conv = ShortConvolution(d_model, conv_kernel)
        else:
            self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.lr_proj = nn.Linear(d_model, h)  # θ_t = base_lr · sigmoid(lr_proj(x_t)) / head_dim
        # the inner model's initial weights and its layer norm (plain parameters: the model's
        # generic init of Linear weights leaves them alone)
        self.W = nn.Parameter(torch.randn(h, f, f) * 0.02)
        self.b = nn.Parameter(torch.zeros(h, f))
        self.ln_weight = nn.Parameter(torch.ones(h, f))
        self.ln_bias = nn.Parameter(torch.zeros(h, f))
        # η_i = max(1/(i+1) + a_i, 0): step size by position in the mini-batch
        self.register_buffer("token_step", 1.0 / torch.arange(1, k + 1), persistent=False)
        self.token_step_offset = nn.Parameter(torch.zeros(k))
        self.post_norm = nn.LayerNorm(d_model, eps=EPS)
        if use_gate:
            self.g_proj = nn.Linear(d_model, d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        with torch.no_grad():  # the reference's init, also for a mixer built outside a model
            nn.init.normal_(self.lr_proj.weight, std=0.02)
            nn.init.zeros_(self.lr_proj.bias)

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, L, D] → q, k, v [B, L, D], position by position (with share_qk: q and k both
        the shared projection, before its convolutions)."""
        q = self.q_proj(x)
        return q, q if self.share_qk else self.k_proj(x), self.v_proj(x)

    def _inputs(
        self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x, q, k, v [B, L, D] → q, k, v [B, H, L, f] (q, k rotated), θ [B, H, L] and η [K] (by
        position in a mini-batch), in fp32 (or wider)."""
        b, l, _ = x.shape
        dtype = torch.promote_types(self.W.dtype, torch.float32)  # fp32, or the parameters' if wider
        def heads(t):
            return t.view(b, l, self.num_heads, self.head_dim).transpose(1, 2).to(dtype)
        pos = torch.arange(l, device=x.device) % self.mini_batch_size  # position in its mini-batch
        q, k = rotary(heads(q), pos, self.rope_theta), rotary(heads(k), pos, self.rope_theta)
        theta = self.base_lr * torch.sigmoid(self.lr_proj(x).to(dtype)).transpose(1, 2) / self.head_dim
        eta = (self.token_step + self.token_step_offset).clamp(min=0.0).to(dtype)
        return q, k, heads(v), theta, eta

    def _output(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """o [B, H, L, f] → layer norm over d_model (gated) → out_proj, [B, L, D]."""
        b, l, _ = x.shape
        y = self.post_norm(o.transpose(1, 2).reshape(b, l, self.d_model).to(x.dtype))
        if self.use_gate:
            y = F.gelu(self.g_proj(x), approximate="tanh") * y
        return self.out_proj(y)

    def _ln(self, z: torch.Tensor) -> torch.Tensor:
        """The inner model's layer norm, per head: z [B, H, ..., f]."""
        shape = (self.num_heads,) + (1,) * (z.dim() - 3) + (self.head_dim,)
        return self.ln_weight.view(shape).to(z.dtype) * _normalize(z)[0] + self.ln_bias.view(shape).to(z.dtype)

    def _grad(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """∂ℓ/∂Z at Z = z [B, H, ..., f] for reconstruction targets v - k."""
        shape = (self.num_heads,) + (1,) * (z.dim() - 3) + (self.head_dim,)
        return ln_l2_grad(z, target, self.ln_weight.view(shape).to(z.dtype), self.ln_bias.view(shape).to(z.dtype))

    def ttt_dual(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, theta: torch.Tensor, eta: torch.Tensor
    ) -> torch.Tensor:
        """Mini-batch TTT, dual form: q, k, v [B, H, L, f], θ [B, H, L], η [K] → o [B, H, L, f].

        The length is zero-padded to a multiple of K; a padded token has θ = 0, so it adds
        no gradient, and a real token only reads gradients of tokens before it."""
        b, h, l, f = q.shape
        c = self.mini_batch_size
        q, k, v, theta = (pad_to_multiple(t, c, 2) for t in (q, k, v, theta))
        n = q.shape[2] // c
        q, k, v = (t.view(b, h, n, c, f) for t in (q, k, v))  # [B, H, N, K, f]
        theta = theta.view(b, h, n, c, 1)
        eta = eta.view(c, 1)  # the same η_i in every mini-batch
        causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
        # (q_i·k_j + 1) for j ≤ i: the weight gradient's part (k_j) and the bias's (1), [B, H, N, K, K]
        A = (q @ k.transpose(-1, -2) + 1.0).masked_fill(~causal, 0.0)
        target = v - k  # what f should reconstruct from k
        W = self.W.to(q.dtype).expand(b, h, f, f)  # [B, H, f, f]
        bias = self.b.to(q.dtype).view(1, h, 1, f).expand(b, h, 1, f)  # [B, H, 1, f]
        step = eta[-1]  # the last token's weights start the next mini-batch
        # only the weights' own recurrence runs mini-batch by mini-batch; every read is batched after it
        starts_W, starts_b, grads = [], [], []
        for k_n, target_n, theta_n in zip(k.unbind(2), target.unbind(2), theta.unbind(2)):
            starts_W.append(W)
            starts_b.append(bias)
            g = theta_n * self._grad(k_n @ W + bias, target_n)  # θ_j ∇_Z ℓ_j at (W₀, b₀), [B, H, K, f]
            grads.append(g)
            W = W - step * (k_n.transpose(-1, -2) @ g)
            bias = bias - step * g.sum(-2, keepdim=True)
        W0, b0, g = (torch.stack(t, dim=2) for t in (starts_W, starts_b, grads))  # per mini-batch
        z = q @ W0 + b0 - eta * (A @ g)  # q_i W_i + b_i, [B, H, N, K, f]
        return (q + self._ln(z)).view(b, h, n * c, f)[:, :, :l]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._project(x)
        if self.share_qk:
            q, k = self.q_conv(q), self.k_conv(k)
        inputs = self._inputs(x, q, k, v)
        with torch.autocast(x.device.type, enabled=False):  # the inner model in fp32
            o = self.ttt_dual(*inputs)
        return self._output(o, x)

    def recurrent(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Token by token, the primal form. State: W₀ [B, H, f, f] and b₀ [B, H, f], the weights
        the current mini-batch started from; (K > 1) the accumulated lr-weighted gradients
        G_W [B, H, f, f] and G_b [B, H, f] of the tokens read so far in it; (share_qk) the
        last conv_kernel - 1 outputs of the shared projection [B, D, conv_kernel - 1], which
        both convolutions read."""
        q, k, v = self._project(x)
        if self.share_qk:
            window = self.q_conv.init_state(q)
            qs, ks = [], []
            for t in range(x.shape[1]):  # the convolutions, one step at a time
                qs.append(self.q_conv.step(q[:, t], window)[0])
                k_t, window = self.k_conv.step(k[:, t], window)
                ks.append(k_t)
            q, k = torch.stack(qs, dim=1), torch.stack(ks, dim=1)
        q, k, v, theta, eta = self._inputs(x, q, k, v)
        b, h, l, f = q.shape
        W0, b0 = self.W.to(q.dtype).expand(b, h, f, f), self.b.to(q.dtype).expand(b, h, f)
        GW, Gb = torch.zeros_like(W0), torch.zeros_like(b0)
        outs = []
        for t in range(l):
            q_t, k_t, v_t = q[:, :, t], k[:, :, t], v[:, :, t]  # [B, H, f]
            g = theta[:, :, t, None] * self._grad(torch.einsum("bhi,bhij->bhj", k_t, W0) + b0, v_t - k_t)
            GW = GW + k_t[..., :, None] * g[..., None, :]  # θ_t ∇_W ℓ_t = θ_t k_tᵀ g_t
            Gb = Gb + g
            step = eta[t % self.mini_batch_size]
            W_t, b_t = W0 - step * GW, b0 - step * Gb
            outs.append(q_t + self._ln(torch.einsum("bhi,bhij->bhj", q_t, W_t) + b_t))
            if (t + 1) % self.mini_batch_size == 0:  # mini-batch done: step, clear the gradients
                W0, b0, GW, Gb = W_t, b_t, torch.zeros_like(GW), torch.zeros_like(Gb)
        state = (W0, b0) if self.mini_batch_size == 1 else (W0, b0, GW, Gb)
        if self.share_qk:
            state = (*state, window)
        return self._output(torch.stack(outs, dim=2), x), state

    def state_size(self, seq_len: int) -> int:
        """Per head, the inner model's weights the current mini-batch started from (W: head_dim²,
        b: head_dim) and, when mini_batch_size > 1, the gradients accumulated within it (as many
        again): 2·num_heads·head_dim·(head_dim + 1), or num_heads·head_dim·(head_dim + 1) when
        mini_batch_size = 1; plus d_model·(conv_kernel - 1) with share_qk (the convolutions'
        shared window). Independent of seq_len."""
        per_copy = self.num_heads * self.head_dim * (self.head_dim + 1)
        weights = per_copy if self.mini_batch_size == 1 else 2 * per_copy
        return weights + (self.d_model * (self.conv_kernel - 1) if self.share_qk else 0)
