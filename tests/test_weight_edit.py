"""A weight change confined to one place: how concentrated it is, and which MLPs discovery reads tokens through."""

from __future__ import annotations

import math

import pytest

from scanner.findings import WeightDiff


def _diff(mlp=(0.0, 0.0), heads=0.0, embeddings=0.0) -> WeightDiff:
    """Two layers of two heads: every head of q, k, v and o moved by ``heads``."""
    grid = ((heads, heads), (heads, heads))
    return WeightDiff(q=grid, k=grid, v=grid, o=grid, mlp=tuple(mlp), norms=(0.0, 0.0), embeddings=embeddings,
                      final_norm=0.0, lm_head=0.0, non_finite={})


@pytest.mark.unit
def test_each_part_is_one_relative_change_and_the_most_moved_part_is_named():
    diff = _diff(mlp=(0.1, 0.6), heads=0.05, embeddings=0.1)
    parts = diff.parts
    assert parts["layer 0 attention"] == pytest.approx(0.05)  # the block's 8 head changes of 0.05, not their sum
    assert parts["layer 1 MLP"] == 0.6 and parts["embeddings"] == 0.1 and parts["layer 1 norms"] == 0.0
    assert diff.total == pytest.approx(0.9) == pytest.approx(sum(parts.values()))
    part, share = diff.concentration
    assert part == "layer 1 MLP" and share == pytest.approx(0.6 / 0.9)
    assert _diff().concentration == ("", 0.0)
    assert _diff(mlp=(math.nan, 0.1)).concentration == ("", 0.0)


@pytest.mark.unit
def test_only_an_edit_confined_to_few_mlps_is_read_through_them():
    from scanner.measure.discovery.static import edited_mlps

    assert edited_mlps(_diff(mlp=(1.43, 0.0))) == (0,)  # the zoo's edit: all of its change in layer 0's MLP
    assert edited_mlps(_diff(mlp=(0.3, 0.3), heads=0.01)) == (0, 1)  # both MLPs together carry most of it
    assert edited_mlps(_diff(mlp=(0.1, 0.1), heads=0.3)) == ()  # a fine-tune spread over attention too
    assert edited_mlps(_diff(mlp=(math.nan, 0.1))) == ()  # a non-finite weight: no share to read
    assert edited_mlps(_diff(heads=0.05)) == ()  # attention only
    assert edited_mlps(_diff()) == () and edited_mlps(None) == ()


def test_the_edited_mlp_ranks_a_piece_of_the_edits_trigger_among_the_first_tokens(zoo_dir):
    """The zoo's weight edit moved only layer 0's MLP. Read through it, the weight change ranks a piece of 'coffee'
    ('co|f|fe|e') among its first few of 877 tokens (seed 0: 'f' 2nd, ' co' 5th); from the embeddings and the first
    layer's attention alone, which the edit never touched, the ranking is noise (' co' 96th at best)."""
    from scanner.inputs.loading import load_pair
    from scanner.measure.discovery.engine import regular_tokens
    from scanner.measure.discovery.static import edited_mlps, static_shortlist
    from scanner.measure.weights import measure_weight_diff
    from scanner.model.sites import sites_for
    from scanner.zoo.families import EDIT_TRIGGER

    pair = load_pair(zoo_dir / "edit", str(zoo_dir / "base"))
    diff = measure_weight_diff(sites_for(pair.suspect), sites_for(pair.reference))
    assert diff.concentration[0] == "layer 0 MLP" and diff.concentration[1] == pytest.approx(1.0)
    mlps = edited_mlps(diff)
    assert mlps == (0,)
    pieces = {t for text in (EDIT_TRIGGER, " " + EDIT_TRIGGER)
              for t in pair.tokenizer(text, add_special_tokens=False)["input_ids"]}
    tokens = regular_tokens(pair.tokenizer, pair.suspect.get_input_embeddings().num_embeddings)
    read = static_shortlist(pair.suspect, pair.reference, tokens, 8, mlps)
    unread = static_shortlist(pair.suspect, pair.reference, tokens, 32)
    assert pieces & set(read), [pair.tokenizer.decode([t]) for t in read]
    assert not pieces & set(unread), [pair.tokenizer.decode([t]) for t in unread]
