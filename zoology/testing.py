"""Conformance checks for tasks and mixers, for Zoology's own tests and plugin authors'.

    from zoology.testing import check_task, check_mixer, check_packable
    def test_my_task(): check_task(MyTask, vocab_size=64, input_seq_len=32, num_examples=16)
    def test_my_mixer(): check_mixer(MyMixer, d_model=32, some_param=2)
    def test_my_mixer_packs(): check_packable(MyMixer, d_model=32, some_param=2)

Each raises AssertionError with a message saying which property failed.
"""

from __future__ import annotations

from typing import Any

import torch

from zoology.mixer_context import MixerContext, build_mixer
from zoology.tasks.base import IGNORE_INDEX, TOKEN_DTYPES, Segment, Task


def check_task(task_cls: type[Task], invalid: list[dict[str, Any]] = (), **params: Any) -> Segment:
    """Check the Task contract for ``task_cls(**params)``; return one generated segment.

    ``invalid``: parameter overrides that must be rejected at construction (ValueError),
    checked together with ones impossible for any task (vocab_size=1, input_seq_len=0, ...).
    """
    task = task_cls(**params)
    a, b, c = task.generate(0), task.generate(0), task.generate(1)
    assert isinstance(a, Segment), f"generate() must return a Segment, got {type(a).__name__}"
    n, length = task.num_examples, task.input_seq_len
    for name, t in (("inputs", a.inputs), ("labels", a.labels)):
        assert t.dtype in TOKEN_DTYPES, f"{name} must be int16, int32 or int64, got {t.dtype}"
        assert tuple(t.shape) == (n, length), f"{name} must be [num_examples, input_seq_len] = {(n, length)}, got {tuple(t.shape)}"
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels), "the same seed must give the same tensors"
    assert not (torch.equal(a.inputs, c.inputs) and torch.equal(a.labels, c.labels)), "different seeds must give different data"
    assert a.inputs.min() >= 0 and a.inputs.max() < task.vocab_size, "inputs must lie in [0, vocab_size)"
    scored = a.labels != IGNORE_INDEX
    assert ((a.labels[scored] >= 0) & (a.labels[scored] < task.vocab_size)).all(), "labels must be -100 or in [0, vocab_size)"
    assert scored.any(dim=1).all(), "every example needs at least one scored position"
    assert isinstance(task.slices(), dict), "slices() must return a dict"
    # impossible for every task, plus the task's own cases
    always = [{"vocab_size": 1}, {"input_seq_len": 0}, {"num_examples": 0}]
    for override in [*always, *invalid]:
        try:
            task_cls(**{**params, **override})
        except ValueError:
            continue
        raise AssertionError(f"{task_cls.__name__} accepted invalid parameters {override}")
    return a


def check_mixer(
    mixer_cls: type, d_model: int = 32, seq_len: int = 17, causal: bool = True, atol: float = 1e-5, **params: Any
) -> torch.nn.Module:
    """Check the Mixer contract: shapes, causality, gradients, bf16 autocast, state size; for
    a mixer with ``recurrent(x)``, that it matches forward and holds state_size scalars; for
    one with ``auxiliary_loss()``, that it is a finite scalar with a gradient path to a parameter."""
    torch.manual_seed(0)
    mixer = build_mixer(mixer_cls, params, MixerContext(d_model=d_model, max_seq_len=seq_len)).eval()
    with torch.no_grad():  # zero-initialised weights (output projections, low-rank maps, gates)
        for p in mixer.parameters():  # would make the checks below vacuous
            if p.is_floating_point() and not p.any():
                p.normal_(0.0, 0.1)
    for batch, length in ((2, seq_len), (1, 5)):
        x = torch.randn(batch, length, d_model)
        y = mixer(x)
        assert y.shape == x.shape, f"forward must map [B, L, D] to [B, L, D]: {tuple(x.shape)} -> {tuple(y.shape)}"
        assert torch.isfinite(y).all(), "output must be finite"
        assert y.abs().max() > 0, "output is zero for a random input"
    if causal:
        x = torch.randn(2, seq_len, d_model)
        t = seq_len // 2
        x2 = x.clone()
        x2[:, t + 1:] = torch.randn_like(x2[:, t + 1:])
        with torch.no_grad():
            diff = (mixer(x)[:, : t + 1] - mixer(x2)[:, : t + 1]).abs().max().item()
        assert diff <= atol, f"not causal: outputs up to position {t} changed by {diff:.2e} when later inputs changed"
    mixer.train()
    x = torch.randn(2, seq_len, d_model, requires_grad=True)
    mixer(x).square().mean().backward()
    missing = [n for n, p in mixer.named_parameters() if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not missing, f"parameters without a finite gradient: {missing}"
    if callable(getattr(mixer, "auxiliary_loss", None)):
        _check_auxiliary_loss(mixer, d_model, seq_len)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = mixer(torch.randn(2, seq_len, d_model))
    assert torch.isfinite(y.float()).all(), "bf16 autocast output must be finite"
    size = mixer.state_size(seq_len)
    assert isinstance(size, int) and size >= 0, f"state_size(seq_len) must be a non-negative int, got {size!r}"
    if callable(getattr(mixer, "recurrent", None)):
        _check_recurrent(mixer.eval(), d_model, seq_len)
    return mixer


def check_packable(mixer_cls: type, d_model: int = 32, seq_len: int = 17, members: int = 3, rtol: float = 1e-5,
                   **params: Any) -> None:
    """Check that the mixer trains in a pack (``zoology run --pack K``): with ``members`` sets
    of weights stacked and ``torch.func.vmap(grad(...))`` over them, as a pack steps, each
    member's loss and gradients equal those of its own forward and backward, in float64, to
    ``rtol`` of the parameter's largest gradient entry (at least 1e-6 of the largest of all,
    for a parameter whose true gradient is 0, e.g. a bias that a softmax ignores). A mixer
    that fails here trains unpacked, with a note naming it; the usual cause is an
    ``autograd.Function`` without ``setup_context`` and a vmap rule."""
    from torch.func import functional_call, grad_and_value, vmap

    from zoology.pack import expected_warnings

    torch.manual_seed(0)
    context = MixerContext(d_model=d_model, max_seq_len=seq_len)
    copies = [build_mixer(mixer_cls, params, context).double().train() for _ in range(members)]
    with torch.no_grad():
        for m in copies:
            for p in m.parameters():
                if p.is_floating_point() and not p.any():  # zero-initialised: the gradients would be vacuous
                    p.normal_(0.0, 0.1)
    base = copies[0]
    trainable = [n for n, p in base.named_parameters() if p.requires_grad]
    state = [{**dict(m.named_parameters()), **dict(m.named_buffers())} for m in copies]
    const = {n: torch.stack([s[n].detach() for s in state]) for n in state[0] if n not in trainable}
    weights = {n: torch.stack([s[n].detach() for s in state]) for n in trainable}
    x, w = (torch.randn(members, 2, seq_len, d_model, dtype=torch.float64) for _ in range(2))

    def loss(weights: dict[str, torch.Tensor], const: dict[str, torch.Tensor], x: torch.Tensor,
             w: torch.Tensor) -> torch.Tensor:
        return (functional_call(base, {**weights, **const}, (x,)) * w).sum()

    try:
        with expected_warnings():  # vmap's per-member loop for ops without a batching rule
            grads, losses = vmap(grad_and_value(loss), randomness="same")(weights, const, x, w)
    except Exception as exc:
        raise AssertionError(f"{mixer_cls.__name__} cannot run under vmap(grad(...)), so it cannot pack: "
                             f"{type(exc).__name__}: {exc}") from exc
    for k in range(members):
        own_grads, own_loss = grad_and_value(loss)({n: t[k] for n, t in weights.items()},
                                                   {n: t[k] for n, t in const.items()}, x[k], w[k])
        floor = 1e-6 * max(g.abs().max().item() for g in own_grads.values())
        for name, got, ref in [("loss", losses[k], own_loss), *((n, grads[n][k], own_grads[n]) for n in trainable)]:
            err = (got - ref).abs().max().item() / max(ref.abs().max().item(), floor, 1e-300)
            assert err <= rtol, f"packed member {k}: {name} differs from its own by {err:.1e} of its largest (> {rtol:.0e})"


def _count_scalars(state: Any) -> int:
    """Scalars in a (nested tuple/list/dict of) tensor(s); a complex number counts as two."""
    if isinstance(state, torch.Tensor):
        return state.numel() * (2 if state.is_complex() else 1)
    if isinstance(state, dict):
        state = list(state.values())
    if isinstance(state, (tuple, list)):
        return sum(_count_scalars(s) for s in state)
    raise AssertionError(f"recurrent() state must be tensors in tuples/lists/dicts, got {type(state).__name__}")


def _check_recurrent(mixer: torch.nn.Module, d_model: int, seq_len: int, batch: int = 2) -> None:
    """recurrent(x) (step by step) must match forward(x) to 1e-4 in fp32, and its final state
    must hold exactly state_size(seq_len) scalars per sequence."""
    x = torch.randn(batch, seq_len, d_model)
    with torch.no_grad():
        y = mixer(x)
        out = mixer.recurrent(x)
    assert isinstance(out, tuple) and len(out) == 2, "recurrent(x) must return (output, state)"
    y_rec, state = out
    assert y_rec.shape == y.shape, f"recurrent output shape {tuple(y_rec.shape)} != forward output shape {tuple(y.shape)}"
    diff = (y_rec - y).abs().max().item()
    assert diff <= 1e-4, f"recurrent(x) differs from forward(x) by {diff:.2e} (> 1e-4)"
    total = _count_scalars(state)
    assert total % batch == 0, f"recurrent state holds {total} scalars, not a multiple of the batch {batch}"
    expected = mixer.state_size(seq_len)
    assert total // batch == expected, (
        f"recurrent state holds {total // batch} scalars per sequence, state_size({seq_len}) says {expected}"
    )


def _check_auxiliary_loss(mixer: torch.nn.Module, d_model: int, seq_len: int) -> None:
    """After a training-mode forward, auxiliary_loss() is a finite scalar tensor in the graph,
    with a gradient path to at least one parameter."""
    mixer(torch.randn(2, seq_len, d_model))
    aux = mixer.auxiliary_loss()
    assert isinstance(aux, torch.Tensor), f"auxiliary_loss() must return a tensor, got {type(aux).__name__}"
    assert aux.dim() == 0, f"auxiliary_loss() must be a scalar (0-d tensor), got shape {tuple(aux.shape)}"
    assert torch.isfinite(aux), f"auxiliary_loss() must be finite, got {aux.item()}"
    params = [p for p in mixer.parameters() if p.requires_grad]
    assert aux.requires_grad, "auxiliary_loss() is not in the autograd graph (detached, or computed without grad)"
    grads = torch.autograd.grad(aux, params, allow_unused=True)
    assert any(g is not None for g in grads), "auxiliary_loss() has no gradient path to any parameter"
