"""The plugin's own tests: Zoology's conformance kit plus what makes the task multi-hop."""

import pytest
from zoology_example import GRU, MultiHopRecall

from zoology import FieldError, load_registry
from zoology.testing import check_mixer, check_packable, check_task

PARAMS = {"vocab_size": 32, "input_seq_len": 24, "num_examples": 64, "num_chains": 3, "hops": 2}


def test_task_conformance():
    check_task(MultiHopRecall, invalid=[{"hops": 0}, {"num_chains": 0}, {"vocab_size": 9}, {"input_seq_len": 14}], **PARAMS)


def test_mixer_conformance():
    check_mixer(GRU, hidden_size=24, num_layers=2)


def test_mixer_packs():
    check_packable(GRU, hidden_size=24, num_layers=2)


def follow(context: list[int], key: int, hops: int) -> int:
    """Reference: walk the (key, value) pairs of a context `hops` steps from `key`."""
    table = dict(zip(context[0::2], context[1::2]))
    for _ in range(hops):
        key = table[key]
    return key


@pytest.mark.parametrize("hops", [1, 2, 4])
def test_label_is_the_token_hops_bindings_away(hops):
    task = MultiHopRecall(**{**PARAMS, "hops": hops, "input_seq_len": 2 * 3 * hops + 3, "num_chains": 3})
    seg = task.generate(seed=5)
    context_len = 2 * task.num_chains * hops
    for inputs, labels in zip(seg.inputs.tolist(), seg.labels.tolist()):
        context = inputs[:context_len]
        assert len(set(context[0::2])) == len(context[0::2]), "keys must be distinct"
        scored = [t for t, lab in enumerate(labels) if lab != -100]
        assert len(scored) == task.num_chains and min(scored) >= context_len
        for t in scored:
            assert follow(context, inputs[t], hops) == labels[t]
            # the answer is a chain end: the value that is never a key
            assert labels[t] not in context[0::2]
        assert all(inputs[t] == 0 for t in range(context_len, len(inputs)) if t not in scored)


def test_pairs_are_shuffled():
    """Pairs are not listed chain by chain: the first key is often not a chain start."""
    seg = MultiHopRecall(**PARAMS).generate(seed=0)
    starts = [set(i[lab != -100].tolist()) for i, lab in zip(seg.inputs, seg.labels)]
    first_is_start = [int(i[0]) in s for i, s in zip(seg.inputs, starts)]
    assert 0 < sum(first_is_start) < len(first_is_start)


def test_invalid_parameters_name_the_field():
    with pytest.raises(FieldError) as err:
        MultiHopRecall(**{**PARAMS, "vocab_size": 9})
    assert err.value.field == "vocab_size" and "num_chains * (hops + 1)" in err.value.message
    with pytest.raises(FieldError) as err:
        MultiHopRecall(**{**PARAMS, "input_seq_len": 14})
    assert err.value.field == "input_seq_len"
    with pytest.raises(FieldError) as err:
        GRU(d_model=8, num_layers=0)
    assert err.value.field == "num_layers"


def test_gru_state_does_not_grow_with_length():
    gru = GRU(d_model=16, hidden_size=8, num_layers=2)
    assert gru.state_size(10) == gru.state_size(10_000) == 16


def test_registered_through_the_entry_point():
    reg = load_registry()
    assert reg.get("task", "example_multi_hop_recall").plugin == "example"
    gru = reg.get("mixer", "example_gru")
    assert gru.plugin == "example" and gru.version
    assert [p.name for p in gru.params] == ["hidden_size", "num_layers", "dropout"]
