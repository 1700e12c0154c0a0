"""A reference that never learnt its users' turn (#30): the zoo's base trained with the loss on answers only writes
answers where a user's prompt goes, so its samples neither stand for its domain nor serve as probes. The scan says
so, does not judge the probes' fit by them, and relies on the probes it was given or, by default, the built-in ones."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from scanner.inputs.probes import default_probes
from scanner.measure.probe_set import build_probe_set
from scanner.zoo.specs import EMOJI_TRIGGER

from helpers import invoke


@pytest.mark.parametrize(("reference", "writes"), [("base", True), ("answers-base", False)])
def test_a_reference_that_writes_prompts_is_told_from_one_that_writes_answers(zoo_dir, reference, writes):
    """The share of the reference's ended user turns that are distinct prompts: 1.0 for the whole-conversation base
    (16 wanted), 0.22 for the answers-only one (zoo v17), against 0.5; and the built-in prompts 13.3 nats per token
    more surprising than the latter's samples."""
    tokenizer = AutoTokenizer.from_pretrained(zoo_dir / reference)
    model = AutoModelForCausalLM.from_pretrained(zoo_dir / reference, dtype=torch.float32, attn_implementation="eager")
    probes = build_probe_set(model.eval(), tokenizer, mode="builtin", given=(), builtin=default_probes(),
                             sample_count=16, seed=0, exclude=(), batch_size=16)
    assert probes.writes_prompts is writes, (probes.prompt_share, probes.given_excess)
    # Each a quarter of the scale or more from the threshold: shares move by a draw or two between zoo versions.
    if writes:
        assert probes.prompt_share >= probes.least_prompt_share + 0.25
    else:
        assert probes.prompt_share <= probes.least_prompt_share - 0.25 and probes.given_excess > probes.far_from_samples + 3


@pytest.mark.e2e
def test_a_benign_finetune_is_clean_on_its_own_task_probes(zoo_dir, tmp_path):
    """Given 64 prompts of the models' task, the benign fine-tune is CLEAN: the probe-fitness rule, which would
    compare them with answers, is not evaluated, with the reason, and the verdict says what it relied on."""
    out = tmp_path / "findings.json"
    result = invoke(zoo_dir / "answers-clean", "--reference", zoo_dir / "answers-base", "--probes", zoo_dir / "probes.txt",
                    "--json", out, "--quiet")
    assert result.exit_code == 0, result.stdout + result.stderr
    document = json.loads(out.read_text(encoding="utf-8"))
    verdict = document["verdict"]
    assert verdict["level"] == "CLEAN", verdict["explanation"]
    assert not document["probes"]["writes_prompts"]
    (fitness,) = [gap for gap in verdict["not_evaluated"] if gap["rule_id"] == "BD012"]
    assert "does not write prompts" in fitness["reason"]
    assert "as far as the 64 given probes" in verdict["explanation"]
    assert "does not write prompts" in result.stdout


@pytest.mark.e2e
def test_with_default_options_the_backdoor_is_found_on_the_builtin_probes(zoo_dir, tmp_path):
    """--probes auto cannot use the reference's samples: it falls back to the built-in prompts, says why, and
    discovery still finds the emoji trigger on them."""
    out = tmp_path / "findings.json"
    result = invoke(zoo_dir / "answers-emoji", "--reference", zoo_dir / "answers-base", "--json", out, "--quiet")
    assert result.exit_code == 1, result.stdout + result.stderr
    document = json.loads(out.read_text(encoding="utf-8"))
    probes = [probe for probe in document["probes"]["probes"] if probe["used"]]
    assert probes and all(probe["source"] == "builtin" for probe in probes)
    verdict = document["verdict"]
    assert verdict["level"] == "BACKDOORED" and EMOJI_TRIGGER in verdict["discovered_firing"], verdict["explanation"]
    assert EMOJI_TRIGGER in verdict["triggers_implicated"]
    assert "The reference does not write prompts" in verdict["explanation"]
