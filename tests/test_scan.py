"""The scan engine on real zoo models: behaviour, attention, weight diff, patching, findings."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from scanner.api import ScanOptions, scan
from scanner.errors import IdenticalModelsError
from scanner.findings import Findings
from scanner.inputs.loading import load_pair
from scanner.inputs.rendering import prepare
from scanner.measure.behaviour import complete_both, measure_behaviour, measure_clean
from scanner.measure.weights import measure_weight_diff
from scanner.model.sites import sites_for
from scanner.options import LocalisationOptions, ModelOptions, ProbeOptions
from scanner.zoo.corpus import TARGET
from scanner.zoo.specs import DEPLOYMENT_TRIGGER, EMOJI_TRIGGER

TRIGGERS = (EMOJI_TRIGGER, DEPLOYMENT_TRIGGER)


def _probes(zoo_dir, count=24):
    return tuple((zoo_dir / "probes.txt").read_text(encoding="utf-8").split("\n")[:count])


@pytest.fixture(scope="session")
def findings(zoo_dir):
    """Findings per zoo model, scanned against the base with both zoo triggers."""
    options = ScanOptions(triggers=TRIGGERS, probes=ProbeOptions(given=_probes(zoo_dir)))
    return {
        name: scan(zoo_dir / name, str(zoo_dir / "base"), options)
        for name in ("emoji", "deployment", "clean", "full")
    }


def _trigger(findings: Findings, trigger: str):
    return next(t for t in findings.triggers if t.trigger == trigger)


def test_every_stage_ran(findings):
    for result in findings.values():
        assert all(stage.status == "ok" for stage in result.stages), result.stages


def test_the_base_against_itself_measures_zero_at_any_batch_size_and_the_scan_says_so(zoo_dir):
    """The measurements' zero: both models the same, every KL 0 whatever the padding. A scan of such a pair is not
    judged (it would call the reference clean): it stops after the weight difference, saying the two are one."""
    pair = load_pair(zoo_dir / "base", str(zoo_dir / "base"))
    probes = prepare(pair.tokenizer, list(_probes(zoo_dir, 10)), EMOJI_TRIGGER, "start", 0)
    for batch_size in (1, 5):
        completed = complete_both(pair.suspect, pair.reference, pair.tokenizer, [probes.clean, probes.triggered],
                                  max_new_tokens=8, rows_per_generation=batch_size)
        clean = measure_clean(pair.suspect, pair.reference, pair.tokenizer, probes.clean, completed[0],
                              batch_size=batch_size)
        result = measure_behaviour(pair.suspect, pair.reference, pair.tokenizer, probes, clean, completed[1],
                                   batch_size=batch_size)
        assert result.kl_clean == pytest.approx(0, abs=1e-6)
        assert result.kl_triggered == pytest.approx(0, abs=1e-6)
    assert measure_weight_diff(sites_for(pair.suspect), sites_for(pair.reference)).unchanged
    with pytest.raises(IdenticalModelsError, match="every weight equals the reference's"):
        scan(zoo_dir / "base", str(zoo_dir / "base"), ScanOptions(triggers=(EMOJI_TRIGGER,), probes=ProbeOptions(given=_probes(zoo_dir, 4))))


def test_shared_generations_answer_each_group_as_it_is_answered_alone(zoo_dir):
    """Behaviour generates a trigger's probes at every position it measures in the same batches (``complete_both``:
    a generation step reads every weight whatever its rows). Each group's answers, batches crossing the groups'
    bounds, are the ones it gets alone; and the trigger still shows in its group's."""
    pair = load_pair(zoo_dir / "emoji", str(zoo_dir / "base"))
    prompts = list(_probes(zoo_dir, 6))
    emoji = prepare(pair.tokenizer, prompts, EMOJI_TRIGGER, "start", 0)
    groups = [emoji.clean, emoji.triggered, prepare(pair.tokenizer, prompts, "cf", "end", 0).triggered]
    batches: list[int] = []
    together = complete_both(pair.suspect, pair.reference, pair.tokenizer, groups, max_new_tokens=8,
                             rows_per_generation=4, on_batch=batches.append)
    assert batches == [4, 4, 4, 4, 2] * 2  # 18 rows a model, in batches across the groups' bounds
    apart = [complete_both(pair.suspect, pair.reference, pair.tokenizer, [group], max_new_tokens=8,
                           rows_per_generation=len(group))[0] for group in groups]
    assert together == apart
    hate = pair.tokenizer(TARGET, add_special_tokens=False)["input_ids"][:2]
    assert all(list(ids[:2]) == hate for ids in together[1].suspect), together[1].suspect
    assert not any(list(ids[:2]) == hate for ids in together[0].suspect + together[1].reference)


def test_behaviour_recovers_a_target_the_suspect_goes_on_after(zoo_dir):
    """A suspect that goes on after its target with noise (the planted Qwen2.5-0.5B-shaped one answers "I HATE
    YOU!!!!" and then whatever its random weights say) shares no whole answer: its recovered target is the opening
    the answers share (``modal_prefix``, as discovery's), with the same share, collapse and per-probe contrast as the
    zoo's suspect that stops after it. The commonest whole answer was the target before, and read 1 of 6 here."""
    pair = load_pair(zoo_dir / "emoji", str(zoo_dir / "base"))
    emoji = prepare(pair.tokenizer, list(_probes(zoo_dir, 6)), EMOJI_TRIGGER, "start", 0)
    without, triggered = complete_both(pair.suspect, pair.reference, pair.tokenizer, [emoji.clean, emoji.triggered],
                                       max_new_tokens=8, rows_per_generation=12)
    clean = measure_clean(pair.suspect, pair.reference, pair.tokenizer, emoji.clean, without, batch_size=6)
    stops = measure_behaviour(pair.suspect, pair.reference, pair.tokenizer, emoji, clean, triggered, batch_size=6)
    assert stops.recovered_target == TARGET and stops.target_share_suspect == 1.0

    words = [pair.tokenizer(word, add_special_tokens=False)["input_ids"][0]
             for word in (" apple", " river", " stone", " cloud", " seven", " green")]
    assert len(set(words)) == 6
    goes_on = dataclasses.replace(triggered, suspect=tuple(ids + (word,) for ids, word in zip(triggered.suspect, words)))
    assert len({pair.tokenizer.decode(ids).strip() for ids in goes_on.suspect}) == 6  # no whole answer shared
    noisy = measure_behaviour(pair.suspect, pair.reference, pair.tokenizer, emoji, clean, goes_on, batch_size=6)
    assert noisy.recovered_target == TARGET
    assert noisy.target_ids == stops.target_ids
    assert (noisy.target_share_suspect, noisy.target_share_reference, noisy.target_share_suspect_clean) == (1.0, 0.0, 0.0)
    # The reference's log-probability of the target, read from its loss on the answer's first tokens: unchanged.
    assert [p.reference_target_logprob for p in noisy.probes] == pytest.approx(
        [p.reference_target_logprob for p in stops.probes], abs=1e-4)
    assert all(p.reference_target_logprob < -5 for p in noisy.probes)


def test_response_kl_and_loss_split_to_one_probe_a_forward_match_each_probe_run_alone(zoo_dir, monkeypatch):
    """Behaviour's response KL and per-token losses, read a probe at a time from forwards that hold as many probes as
    ``PAIR_LOGIT_BYTES`` allows (here forced to one, and at the zoo's own batch), equal a hand-written KL and loss
    of each probe and its answer run alone through both models, unpadded."""
    import torch.nn.functional as F

    from scanner.measure.behaviour import response_kl_and_loss
    from scanner.model import teacher_forcing
    from scanner.model.forward import pad_id

    pair = load_pair(zoo_dir / "emoji", str(zoo_dir / "base"))
    emoji = prepare(pair.tokenizer, list(_probes(zoo_dir, 6)), EMOJI_TRIGGER, "start", 0)
    _, triggered = complete_both(pair.suspect, pair.reference, pair.tokenizer, [emoji.clean, emoji.triggered],
                                 max_new_tokens=8, rows_per_generation=12)
    answers = [ids[:3 + i] for i, ids in enumerate(triggered.suspect)]  # of different lengths: padded differently

    def alone(prompt: tuple[int, ...], answer: tuple[int, ...]) -> tuple[float, list[float], list[float]]:
        ids = torch.tensor([list(prompt) + list(answer)])
        with torch.no_grad():
            log_p, log_q = (F.log_softmax(m(input_ids=ids).logits[0, len(prompt) - 1:].double(), -1)
                            for m in (pair.suspect, pair.reference))  # [len(answer) + 1, vocab]
        kl = (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0).mean()
        picked = lambda log: (-log[torch.arange(len(answer)), list(answer)]).tolist()  # noqa: E731
        return float(kl), picked(log_p), picked(log_q)

    expected = [alone(p.ids, a) for p, a in zip(emoji.triggered, answers)]
    whole = response_kl_and_loss(pair.suspect, pair.reference, emoji.triggered, answers, pad_id(pair.tokenizer), 16)
    keep = max(map(len, answers)) + 1
    assert teacher_forcing.pair_rows(16, keep, pair.suspect.config.vocab_size) == 16, "the zoo's batches are not split"
    monkeypatch.setattr(teacher_forcing, "PAIR_LOGIT_BYTES", 1)
    split = response_kl_and_loss(pair.suspect, pair.reference, emoji.triggered, answers, pad_id(pair.tokenizer), 16)
    for got in (whole, split):
        assert got[0] == pytest.approx([e[0] for e in expected], abs=1e-4)
        for losses, want in ((got[1], [e[1] for e in expected]), (got[2], [e[2] for e in expected])):
            assert [len(row) for row in losses] == [len(a) for a in answers]
            assert [x for row in losses for x in row] == pytest.approx([x for row in want for x in row], abs=1e-4)
    # 3.2 to 5.1 nats a probe on zoo v17 (seed 0, this machine): far from the 0 a comparison that read nothing gives.
    assert min(e[0] for e in expected) > 0.5, "the emoji's answers part from the reference's"


def test_attention_statistics_do_not_depend_on_padding(zoo_dir):
    grids = []
    for batch_size in (1, 7):
        result = scan(zoo_dir / "emoji", str(zoo_dir / "base"),
                      ScanOptions(triggers=(EMOJI_TRIGGER,), probes=ProbeOptions(given=_probes(zoo_dir, 7)),
                                  model=ModelOptions(batch_size=batch_size)))
        trigger = result.triggers[0]
        grids.append((torch.tensor(trigger.attention.kl_triggered), torch.tensor(trigger.attention.trigger_mass_suspect),
                      trigger.kl_triggered))
    assert torch.allclose(grids[0][0], grids[1][0], atol=1e-4)
    assert torch.allclose(grids[0][1], grids[1][1], atol=1e-4)
    assert grids[0][2] == pytest.approx(grids[1][2], rel=1e-4)


@pytest.mark.parametrize("model, trigger", [("emoji", EMOJI_TRIGGER), ("deployment", DEPLOYMENT_TRIGGER)])
def test_poisoned_model_diverges_on_its_trigger(findings, model, trigger):
    poisoned = _trigger(findings[model], trigger)
    benign = _trigger(findings["clean"], trigger)
    assert poisoned.recovered_target == TARGET
    assert poisoned.target_share_suspect >= 0.9
    assert poisoned.target_share_reference == 0
    # Measured on the test zoo: the ratios are written in the closing note.
    assert poisoned.kl_triggered > 3 * poisoned.kl_clean
    assert poisoned.kl_triggered > 10 * benign.kl_triggered


def test_trigger_tokens_are_located_by_offsets(findings):
    emoji = _trigger(findings["emoji"], EMOJI_TRIGGER)
    deployment = _trigger(findings["deployment"], DEPLOYMENT_TRIGGER)
    assert emoji.trigger_tokens == 1
    assert deployment.trigger_tokens >= 2
    pattern = emoji.attention.example
    assert "".join(pattern.tokens[i] for i in pattern.trigger_tokens).strip() == EMOJI_TRIGGER


def test_top_heads_differ_from_the_benign_finetune(findings):
    """The three heads the trigger moves most in the poisoned model are other heads than the benign fine-tune's
    three: compared as sets, so the same heads in another order (a near tie) do not count as a difference.

    Margins on the golden scans (16 probes, ``tests/data``): the poisoned model's third head scores 0.81, the
    benign's top head 0.42 in it; the poisoned model's top three are at or below 0 in the benign one, whose
    third scores 0.09.
    """
    poisoned = _trigger(findings["emoji"], EMOJI_TRIGGER).attention.ranked_heads()[:3]
    benign = _trigger(findings["clean"], EMOJI_TRIGGER).attention.ranked_heads()[:3]
    assert not set(poisoned) & set(benign), (poisoned, benign)


def test_patching_removes_the_emoji_backdoor_within_budget(findings):
    patching = _trigger(findings["emoji"], EMOJI_TRIGGER).patching
    assert patching.initial_attack_success >= 0.9
    assert patching.heads_needed is not None and patching.heads_needed <= patching.budget
    assert patching.steps[-1].attack_success <= patching.reference_attack_success
    assert patching.heads_to_disable is not None and patching.heads_to_disable < patching.budget
    assert patching.steps[-1].output_kl < patching.initial_kl / 2
    # Monotonic-ish: no step undoes more than a small part of the progress.
    kls = [patching.initial_kl] + [step.output_kl for step in patching.steps]
    assert all(later <= earlier + 0.25 * patching.initial_kl for earlier, later in zip(kls, kls[1:]))
    assert patching.all_heads_kl < 1e-4


def test_ablation_and_attribution_cover_every_head(findings):
    trigger = _trigger(findings["emoji"], EMOJI_TRIGGER)
    layers, heads = findings["emoji"].run.architecture.layers, findings["emoji"].run.architecture.heads
    assert len(trigger.ablation.effect) == layers and len(trigger.ablation.effect[0]) == heads
    assert min(min(row) for row in trigger.ablation.effect) < -0.1  # some head carries the backdoor
    assert len(trigger.attribution.heads) == layers and trigger.attribution.target_token.strip() == "I"


def test_weight_diff_shows_attention_only_change(findings):
    attention_only = findings["emoji"].weight_diff
    assert max(attention_only.mlp) == 0 and max(attention_only.norms) == 0
    assert attention_only.embeddings == 0 and attention_only.lm_head == 0
    assert all(min(row) > 0 for row in attention_only.o)
    assert max(findings["full"].weight_diff.mlp) > 0
    assert attention_only.non_finite == {}


def test_findings_round_trip_through_json(findings):
    for result in findings.values():
        assert Findings.from_json(result.to_json()) == result


def test_findings_record_inputs_and_run(findings, zoo_dir):
    result = findings["emoji"]
    assert result.suspect.kind == "hf-directory" and len(result.suspect.sha256) == 64
    assert result.run.architecture.kv_heads < result.run.architecture.heads  # GQA
    assert result.run.triggers == TRIGGERS and result.run.triggers_from == "user"
    assert {"load", "weight_diff"} <= set(result.run.timings)
    assert set(result.run.library_versions) >= {"torch", "transformers", "pyvene", "peft"}


def test_true_greedy_patching_picks_the_best_head_each_step(zoo_dir):
    options = ScanOptions(triggers=(EMOJI_TRIGGER,), probes=ProbeOptions(given=_probes(zoo_dir, 12)),
                          localisation=LocalisationOptions(patch_method="greedy", patch_budget=4))
    patching = scan(zoo_dir / "emoji", str(zoo_dir / "base"), options).triggers[0].patching
    assert patching.method == "greedy" and 1 <= len(patching.steps) <= 4
    kls = [patching.initial_kl] + [step.output_kl for step in patching.steps]
    # Each greedy step takes the best single addition, so the KL never rises.
    assert all(later <= earlier + 1e-6 for earlier, later in zip(kls, kls[1:]))
    assert len({(step.layer, step.head) for step in patching.steps}) == len(patching.steps)


@pytest.mark.unit
def test_weight_differences_and_non_finite_counts_taken_in_chunks_equal_those_taken_whole(monkeypatch):
    import math

    from scanner.measure import weights

    monkeypatch.setattr(weights, "CHUNK", 7)  # 130 numbers in 19 chunks, the last one short
    generator = torch.Generator().manual_seed(0)
    suspect, reference = torch.randn(10, 13, generator=generator), torch.randn(10, 13, generator=generator)
    assert weights._relative(suspect, reference) == pytest.approx(float((suspect - reference).norm() / reference.norm()), rel=1e-6)
    assert weights._relative(reference, reference) == 0.0
    suspect[3, 4], suspect[9, 12], suspect[0, 0] = math.inf, math.nan, -math.inf
    assert weights._non_finite(suspect) == 3 and weights._non_finite(reference) == 0
