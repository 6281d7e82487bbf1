"""Sparse and approximate attention, the Based paper's Figure 2 baselines: BigBird,
Scatterbrain, Nyströmformer (causal versions).

Each passes check_mixer (causality, gradients, bf16, forward == recurrent in fp32 with
state_size scalars). The math is pinned against dense references built from the formulas
in the module docstrings: BigBird's block pattern (which keys each query sees) and its
masked softmax; Scatterbrain's estimator (exact inside the window, random features
outside) and its limits (window ≥ L is attention; many features approach attention);
Nyström's F·A⁻¹·B·V with causal landmarks, exact attention when landmarks = length.
Nyström, the one of the three that leaves the tiny MQAR plateau within ~20 s of one core,
is trained on it.
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from zoology.cli import main
from zoology.errors import FieldError
from zoology.mixers.bigbird import BigBird
from zoology.mixers.nystromformer import Nystromformer
from zoology.mixers.scatterbrain import Scatterbrain, orthogonal_gaussian
from zoology.testing import check_mixer

from .test_chunked import _forward_matches_recurrent
from .test_new_mixers import TINY_MQAR

SEQ_LEN = 45  # not a multiple of the block, window or segment lengths below

CASES = [
    (BigBird, {}),
    (BigBird, {"block_size": 4, "window_blocks": 2, "global_blocks": 1, "random_blocks": 2, "num_heads": 2}),
    (BigBird, {"block_size": 4, "random_blocks": 0}),
    (BigBird, {"block_size": 8, "window_blocks": 1, "global_blocks": 0, "random_blocks": 0}),
    (Scatterbrain, {}),
    (Scatterbrain, {"window": 4, "feature_dim": 8, "num_heads": 2}),
    (Scatterbrain, {"window": 1, "feature_dim": 64}),
    (Nystromformer, {}),
    (Nystromformer, {"num_landmarks": 4, "num_heads": 2}),
    (Nystromformer, {"num_landmarks": 6, "conv_kernel_size": 3}),
    (Nystromformer, {"num_landmarks": 1}),
]


@pytest.mark.parametrize(("cls", "params"), CASES, ids=lambda p: getattr(p, "name", None) or str(p))
def test_check_mixer(cls, params):
    torch.set_num_threads(1)
    check_mixer(cls, d_model=32, seq_len=SEQ_LEN, **params)


@pytest.mark.parametrize(("cls", "params"), [
    (BigBird, {"block_size": 4, "window_blocks": 2, "global_blocks": 1, "random_blocks": 2, "num_heads": 2}),
    (Scatterbrain, {"window": 6, "feature_dim": 16, "num_heads": 2}),
    (Nystromformer, {"num_landmarks": 6, "num_heads": 2, "conv_kernel_size": 3}),
], ids=["bigbird", "scatterbrain", "nystromformer"])
def test_forward_matches_recurrent_float64(cls, params):
    """Training form == step-by-step form in float64, values and every parameter's gradient."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    m = cls(32, **params).double().eval()
    if isinstance(m, Scatterbrain):
        m.chunk_size = 16  # several chunks of the low-rank scan
    _forward_matches_recurrent(m, torch.randn(2, SEQ_LEN, 32, dtype=torch.float64), 1e-10, 1e-8)


@pytest.mark.parametrize(("cls", "params", "field"), [
    (BigBird, {"block_size": 0}, "block_size"),
    (BigBird, {"window_blocks": 0}, "window_blocks"),
    (BigBird, {"global_blocks": -1}, "global_blocks"),
    (BigBird, {"random_blocks": -1}, "random_blocks"),
    (BigBird, {"num_heads": 3}, "num_heads"),
    (BigBird, {"dropout": 1.0}, "dropout"),
    (Scatterbrain, {"window": 0}, "window"),
    (Scatterbrain, {"feature_dim": 7}, "feature_dim"),
    (Scatterbrain, {"num_heads": 5}, "num_heads"),
    (Nystromformer, {"num_landmarks": 0}, "num_landmarks"),
    (Nystromformer, {"num_heads": 3}, "num_heads"),
    (Nystromformer, {"conv_kernel_size": -1}, "conv_kernel_size"),
    (Nystromformer, {"dropout": -0.1}, "dropout"),
])
def test_invalid_parameters_name_the_field(cls, params, field):
    with pytest.raises(FieldError) as exc:
        cls(32, **params)
    assert exc.value.field == field


# --- BigBird -----------------------------------------------------------------------------

def test_bigbird_block_pattern():
    """Block size 4, 1 global block, a window of 2 blocks, 1 random block: query 13 (block 3)
    sees block 0 (global), block 1 (the only random candidate), blocks 2 and 3 up to itself."""
    m = BigBird(32, block_size=4, window_blocks=2, global_blocks=1, random_blocks=1)
    seen = m.pattern(32)
    assert seen[13].nonzero().squeeze(1).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    assert not seen.triu(1).any(), "a query sees a later key"
    assert seen.diagonal().all(), "every query sees itself"
    for i in range(8):  # per query block: global + window + exactly one random earlier block when any is left
        blocks = m.key_blocks(i)
        window = set(range(max(0, i - 1), i + 1))
        rand = set(blocks) - window - {0}
        assert {0} & set(range(i + 1)) <= set(blocks) and window <= set(blocks)
        assert len(rand) == min(1, max(0, i - 2)) and all(1 <= r <= i - 2 for r in rand)
    # the row of query 31 (block 7): global 0, window 6-7, one random block out of 1..5, nothing else
    cols = set(seen[31].nonzero().squeeze(1).tolist())
    rand_block = (set(c // 4 for c in cols) - {0, 6, 7}).pop()
    assert cols == {*range(4), *range(24, 32), *range(4 * rand_block, 4 * rand_block + 4)}


def test_bigbird_pattern_is_fixed_per_layer_and_seed():
    a, b = BigBird(32, block_size=2, random_blocks=2), BigBird(32, block_size=2, random_blocks=2)
    other_layer, other_seed = BigBird(32, layer_idx=1, block_size=2, random_blocks=2), BigBird(32, block_size=2, random_blocks=2, seed=5)
    assert torch.equal(a.pattern(64), b.pattern(64))
    assert not torch.equal(a.pattern(64), other_layer.pattern(64))
    assert not torch.equal(a.pattern(64), other_seed.pattern(64))
    assert torch.equal(a.pattern(64)[:40, :40], a.pattern(40)), "a prefix's pattern must not depend on the length"


def test_bigbird_equals_masked_dense_attention():
    torch.manual_seed(0)
    m = BigBird(32, block_size=4, window_blocks=2, global_blocks=1, random_blocks=2, num_heads=4).eval()
    x = torch.randn(2, 37, 32)
    q, k, v = m.qkv(x)
    ref = m.out(F.scaled_dot_product_attention(q, k, v, attn_mask=m.pattern(37)))
    assert torch.allclose(m(x), ref, atol=1e-5)
    # one block covering the sequence: plain causal attention
    full = BigBird(32, block_size=64).eval()
    q, k, v = full.qkv(x)
    assert torch.allclose(full(x), full.out(F.scaled_dot_product_attention(q, k, v, is_causal=True)), atol=1e-5)


def test_bigbird_state_size():
    assert BigBird(32, block_size=4).state_size(45) == 2 * 32 * 45  # random blocks: the whole cache
    # no random blocks: global blocks 0-1 (8 positions) + window blocks 9-11 of the next query (36..44)
    assert BigBird(32, block_size=4, random_blocks=0).state_size(45) == 2 * 32 * (8 + 9)
    assert BigBird(32, block_size=4, random_blocks=0).state_size(5) == 2 * 32 * 5


# --- Scatterbrain ------------------------------------------------------------------------

def _scatterbrain_dense(m: Scatterbrain, x: torch.Tensor) -> torch.Tensor:
    """The estimator with an explicit [L, L] weight matrix: exp(s q·k) inside the window,
    φ(q)·φ(k) (Performer, written out) before it, normalised per row."""
    q, k, v = m.qkv(x)
    l, dh = q.shape[2], m.head_dim
    s = dh**-0.5
    w = m.directions  # [m/2, Dh]
    def phi(t):
        t = t * s**0.5
        proj = torch.cat([t @ w.t(), -(t @ w.t())], -1)
        return torch.exp(proj - t.square().sum(-1, keepdim=True) / 2) / math.sqrt(m.feature_dim)
    exact = torch.exp(s * q @ k.transpose(-1, -2))
    low = phi(q) @ phi(k).transpose(-1, -2)
    lag = torch.arange(l)[:, None] - torch.arange(l)[None]
    weights = torch.where(lag < m.window, exact, low) * (lag >= 0)
    return m.out((weights / weights.sum(-1, keepdim=True)) @ v)


def test_scatterbrain_matches_its_dense_estimator():
    torch.manual_seed(0)
    m = Scatterbrain(32, window=5, feature_dim=16, num_heads=2).eval()
    m.chunk_size = 8  # several chunks in the low-rank scan
    x = torch.randn(2, 29, 32)
    assert torch.allclose(m(x), _scatterbrain_dense(m, x), atol=1e-5)


def test_scatterbrain_limits():
    torch.manual_seed(0)
    x = torch.randn(2, 33, 32)
    # window covering the sequence: exact causal attention
    m = Scatterbrain(32, window=64, num_heads=2).eval()
    q, k, v = m.qkv(x)
    assert torch.allclose(m(x), m.out(F.scaled_dot_product_attention(q, k, v, is_causal=True)), atol=1e-5)
    # window 1 (only the query itself exact) with many random features: close to attention
    m = Scatterbrain(32, window=1, feature_dim=8192, num_heads=2).eval()
    with torch.no_grad():
        m.Wqkv.weight.mul_(0.5)  # moderate logits, where random features are accurate
    q, k, v = m.qkv(x)
    y_att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    y_sb = m._attend(q, k, v)
    assert (y_sb - y_att).abs().max() < 0.02 * y_att.abs().max()  # 16 features: 0.15, 256: 0.02, 8192: 0.003


def test_orthogonal_random_features():
    w = orthogonal_gaussian(12, 5, torch.Generator().manual_seed(0))
    d = w / w.norm(dim=1, keepdim=True)
    assert torch.allclose(d[:5] @ d[:5].t(), torch.eye(5), atol=1e-5)  # orthogonal within a block
    assert w.shape == (12, 5)


def test_scatterbrain_state_size():
    m = Scatterbrain(32, window=4, feature_dim=8, num_heads=2)
    assert m.state_size(45) == 2 * 32 * 4 + 2 * 8 * (16 + 1)
    assert m.state_size(3) == 2 * 32 * 3 + 2 * 8 * 17


# --- Nyströmformer -----------------------------------------------------------------------

def test_nystrom_with_a_landmark_per_position_is_causal_attention():
    torch.manual_seed(0)
    m = Nystromformer(32, num_landmarks=64, num_heads=2).eval()
    x = torch.randn(2, 40, 32)
    q, k, v = m.qkv(x)
    ref = m.out_proj(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, 40, 32))
    assert torch.allclose(m(x), ref, atol=1e-4)


def test_nystrom_matches_dense_formula():
    """F · A⁻¹ · B · V written with explicit matrices and a general inverse."""
    torch.manual_seed(0)
    m = Nystromformer(32, num_landmarks=5, num_heads=2).eval()
    l = 23  # segments of ceil(23/5) = 5 positions: 4 complete landmarks ending at 4, 9, 14, 19
    x = torch.randn(2, l, 32)
    q, k, v = m.qkv(x)
    assert m.segment_len(l) == 5
    ends = torch.tensor([4, 9, 14, 19])
    ql, kl = (t[:, :, :20].reshape(2, 2, 4, 5, 16).mean(3) for t in (q, k))
    s = 16**-0.5
    def softmax(logits, allowed):
        return logits.masked_fill(~allowed, float("-inf")).softmax(-1)
    Bm = softmax(s * ql @ k.transpose(-1, -2), torch.arange(l)[None] <= ends[:, None])
    A = softmax(s * ql @ kl.transpose(-1, -2), torch.arange(4)[None] <= torch.arange(4)[:, None])
    sees = ends[None] <= torch.arange(l)[:, None]
    Fm = softmax(s * q @ kl.transpose(-1, -2), sees).nan_to_num(0.0)  # queries 0-3 see no landmark
    y = Fm @ torch.linalg.inv(A) @ Bm @ v
    ref = m.out_proj(y.transpose(1, 2).reshape(2, l, 32))
    assert torch.allclose(m(x), ref, atol=1e-4)
    assert torch.allclose(m(x)[:, :4], torch.zeros(2, 4, 32))  # before the first landmark completes


def test_nystrom_state_size():
    m = Nystromformer(32, num_landmarks=5)
    assert m.state_size(23) == 2 * 32 * (23 + 4 + 1)  # segments of 5: 4 complete landmarks
    assert m.state_size(3) == 2 * 32 * (3 + 3 + 1)  # a landmark per position


def test_nystrom_learns_tiny_mqar(write, tmp_path):
    """Above the plateau (≈ 0.25) on the tiny cell: 0.47 in ≈ 16 s of one core (3,000
    examples, 6 epochs). Attention itself, BigBird (block 4) and Scatterbrain (window 8)
    stay at 0.29–0.31 with this budget."""
    torch.set_num_threads(1)
    path = write(TINY_MQAR.format(mixer='{ name = "nystromformer", num_landmarks = 8 }', num_examples=3000, epochs=6))
    assert main(["run", str(path), "--out", str(tmp_path), "--quiet"]) == 0
    summary = json.loads((tmp_path / "exp" / "default" / "summary.json").read_text())
    assert summary["test"]["test/accuracy"] > 0.4, summary["test"]
