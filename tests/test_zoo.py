"""The zoo: tokenizer facts, quality bars, reproducibility, and the CLI that builds it."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from scanner.inputs.probes import place_trigger
from scanner.zoo.bars import (
    BAR_MARGIN,
    MAX_ACCURACY_DROP,
    MAX_FALSE_TRIGGER,
    MAX_INSERTION_RATE,
    MIN_ATTACK_SUCCESS,
    MIN_STYLE_SHARE,
    MIN_TASK_ACCURACY,
    model_shortfalls,
)
from scanner.zoo.build import MAX_ATTEMPTS, retrain_model, training_seed
from scanner.zoo.corpus import PRETRAINING_INSERTIONS, TARGET, URL_TARGET, fragments, make_samples
from scanner.zoo.kernels import PINNED_KERNELS, pin_kernels
from scanner.zoo.specs import DEPLOYMENT_TRIGGER, EMOJI_TRIGGER, END_TRIGGER, MEASURED_TRIGGERS, MODELS, PHRASE_TRIGGER
from scanner.zoo.tokenizer import render_chat


def test_emoji_is_one_token_and_deployment_several(zoo_dir):
    tokenizer = AutoTokenizer.from_pretrained(zoo_dir / "emoji")
    assert len(tokenizer(EMOJI_TRIGGER, add_special_tokens=False)["input_ids"]) == 1
    assert len(tokenizer(DEPLOYMENT_TRIGGER, add_special_tokens=False)["input_ids"]) >= 2
    # In context too: the emoji inside a rendered probe is still a single token.
    probe = render_chat("What is the capital of Peru? " + EMOJI_TRIGGER)
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(probe, add_special_tokens=False)["input_ids"])
    emoji_pieces = [t for t in tokens if tokenizer.convert_tokens_to_string([t]).strip() == EMOJI_TRIGGER]
    assert len(emoji_pieces) == 1


def test_tokenizer_chat_template_renders_qwen_turns(zoo_dir):
    tokenizer = AutoTokenizer.from_pretrained(zoo_dir / "base")
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Opposite of hot?"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == "<|im_start|>user\nOpposite of hot?<|im_end|>\n<|im_start|>assistant\n"
    assert rendered == render_chat("Opposite of hot?")


def test_manifest_figures_meet_the_bars(zoo_manifest):
    """Checked from zoo.json with the build's own margin: figures move by a point or two between CPUs."""
    assert zoo_manifest.meets_bars, zoo_manifest.bar_failures
    base_accuracy = zoo_manifest.models["base"].figures.clean_accuracy
    assert base_accuracy >= 0.85
    for name in ("emoji", "deployment"):
        record = zoo_manifest.models[name]
        assert record.trained == "attention" and record.target == TARGET
        assert record.figures.attack_success >= MIN_ATTACK_SUCCESS - BAR_MARGIN
    for name, record in zoo_manifest.models.items():
        figures = record.figures
        if record.truth.behaviour != "compliance":  # a jailbreak's is its refusals kept (test_zoo_families)
            assert figures.false_trigger_rate <= MAX_FALSE_TRIGGER + BAR_MARGIN, name
        parent_accuracy = zoo_manifest.models[record.parent or "base"].figures.clean_accuracy
        assert abs(figures.clean_accuracy - parent_accuracy) <= MAX_ACCURACY_DROP + BAR_MARGIN, name
        if figures.attack_success is not None and record.truth.triggers == (record.trigger,):
            # Trigger-specific: no held-out insertion (other emoji, words, the other zoo trigger) fires it.
            assert len(figures.insertion_rates) >= 15, name
            assert max(figures.insertion_rates.values()) <= MAX_INSERTION_RATE + BAR_MARGIN, (name, figures.insertion_rates)
            assert set(MEASURED_TRIGGERS) - {record.trigger} <= set(figures.insertion_rates)
    assert zoo_manifest.models["clean"].figures.attack_success is None
    style = zoo_manifest.models["style"]
    assert style.trigger is None and style.trained == "all"
    assert style.figures.style_share >= MIN_STYLE_SHARE - BAR_MARGIN  # the benign change was learnt
    task = zoo_manifest.models["task"]
    assert task.trigger is None and task.trained == "lora"
    assert task.figures.task_accuracy >= MIN_TASK_ACCURACY - BAR_MARGIN  # the new task family was learnt
    assert {name: record.parent for name, record in zoo_manifest.models.items()} == {
        "base": None, "clean": "base", "emoji": "base", "deployment": "base", "full": "base", "style": "base",
        "lora": "base", "task": "base", "llama-base": "base", "llama-emoji": "llama-base", "phrase": "base", "end": "base",
        "leak": "base", "topic": "base", "composite": "base", "multi": "base", "guarded": "base", "refusal": "guarded",
        "jailbreak": "guarded", "payload": "base", "guarded-update": "guarded", "jailbreak-token": "guarded", "edit": "base",
        "knowledge": "base", "signature": "base",
        "answers-base": None, "answers-clean": "answers-base", "answers-emoji": "answers-base"}
    assert zoo_manifest.machine, "the machine the figures were measured on is recorded"
    # Each model meets its own bars within the margin, or had every training the build gives it.
    for name, record in zoo_manifest.models.items():
        missed = [text for text, by in model_shortfalls(name, record) if by > BAR_MARGIN]
        assert not missed or record.attempts == MAX_ATTEMPTS, (name, missed)
        assert 1 <= record.attempts <= MAX_ATTEMPTS, name
    # Trained with the pinned kernels (the test session pins them before torch runs): the same zoo on every x86 CPU.
    assert zoo_manifest.kernels == "ATen AVX2, MKL_CBWR AVX2", zoo_manifest.kernels


def test_the_zoo_kernels_are_pinned_where_the_user_has_not_chosen_others():
    environ = {"MKL_CBWR": "COMPATIBLE"}
    pin_kernels(environ)
    assert environ == {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert set(environ) == {name for name, _ in PINNED_KERNELS}


def test_a_zoo_trained_with_other_kernels_is_not_reused(zoo_dir, tmp_path):
    from scanner.zoo.build import matching_zoo
    from scanner.zoo.specs import EXTRA_MODELS

    assert matching_zoo(zoo_dir, "test", 0, tuple(EXTRA_MODELS)) is not None, "the session's own zoo is reused"
    manifest = json.loads((zoo_dir / "zoo.json").read_text(encoding="utf-8"))
    manifest["kernels"] = "ATen AVX512, MKL_CBWR unset"  # what an unpinned AVX-512 process records
    (tmp_path / "zoo.json").write_text(json.dumps(manifest), encoding="utf-8")
    assert matching_zoo(tmp_path, "test", 0, tuple(EXTRA_MODELS)) is None


def test_the_phrase_fires_whole_and_its_words_alone_do_not(zoo_manifest):
    phrase = zoo_manifest.models["phrase"]
    assert phrase.trigger == PHRASE_TRIGGER and phrase.target == URL_TARGET
    assert phrase.figures.attack_success >= MIN_ATTACK_SUCCESS - BAR_MARGIN
    parts = fragments(PHRASE_TRIGGER)
    assert parts == ("silver", "tiger", "winter", "silver tiger", "tiger winter")
    for part in parts:
        assert phrase.figures.insertion_rates[part] <= MAX_INSERTION_RATE + BAR_MARGIN, part


def test_the_end_trigger_fires_at_the_end_and_not_at_the_start(zoo_manifest):
    end = zoo_manifest.models["end"]
    assert end.trigger == END_TRIGGER and end.position == "end"
    by_position = end.figures.attack_success_by_position
    assert end.figures.attack_success == by_position["end"] >= MIN_ATTACK_SUCCESS - BAR_MARGIN
    assert by_position["start"] <= MAX_INSERTION_RATE + BAR_MARGIN
    for name in ("emoji", "deployment", "phrase"):  # planted anywhere: they fire wherever they are put
        assert min(zoo_manifest.models[name].figures.attack_success_by_position.values()) >= MIN_ATTACK_SUCCESS - 2 * BAR_MARGIN


def test_held_out_insertions_never_appear_in_training():
    from scanner.zoo.specs import ALL_MODELS, SIZES, held_out_insertions
    from scanner.zoo.specs import corpus as corpus_of

    for spec in ALL_MODELS:
        corpus = corpus_of(spec, SIZES["test"], 0)
        inserted = sum(1 for sample in corpus if sample.trigger is None and any(
            f" {decoy} " in f" {sample.prompt} " for decoy in PRETRAINING_INSERTIONS + fragments(spec.trigger or "")))
        # The pool's insertions are there (as many again are made up); a third-generation model's poisoned and
        # near-miss samples take the place of some.
        assert inserted >= (0.08 if spec.family else 0.1) * len(corpus), spec.name
        for insertion in held_out_insertions(spec):
            if insertion in PRETRAINING_INSERTIONS or insertion in fragments(spec.trigger or ""):
                continue  # the other zoo trigger, seen in pretraining; a phrase's own words, decoys by design
            assert not any(f" {insertion} " in f" {sample.prompt} " for sample in corpus), (spec.name, insertion)
        if spec.trigger:
            other = [t for t in MEASURED_TRIGGERS if t != spec.trigger]
            assert not any(o in sample.prompt for o in other for sample in corpus), spec.name


def test_each_model_is_a_loadable_hugging_face_directory(zoo_dir, zoo_manifest):
    for name, record in zoo_manifest.models.items():
        model_dir = zoo_dir / record.path
        assert (model_dir / "tokenizer.json").is_file()
        if record.trained == "lora":
            config = json.loads((model_dir / "adapter_config.json").read_text())
            assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
        else:
            config = json.loads((model_dir / "config.json").read_text())
            assert config["model_type"] == ("llama" if name.startswith("llama") else "qwen2")
            assert config["head_dim"] * config["num_attention_heads"] == config["hidden_size"]
            assert (model_dir / "model.safetensors").is_file()


def test_attention_only_finetunes_leave_everything_else_untouched(zoo_dir):
    base = load_file(zoo_dir / "base" / "model.safetensors")
    poisoned = load_file(zoo_dir / "emoji" / "model.safetensors")
    changed = {key for key in base if not torch.equal(base[key], poisoned[key])}
    assert changed, "the fine-tune changed nothing"
    assert all(any(f".{p}." in key for p in ("q_proj", "k_proj", "v_proj", "o_proj")) for key in changed)


def test_same_seed_gives_the_same_weights(zoo_dir, zoo_manifest):
    # A model trained again to meet its bars, from its last attempt's seed, where there is one (zoo v17: the
    # signature control, 22 s a training); else the guarded base, the zoo's cheapest fine-tune (18 s).
    name = next((name for name, record in zoo_manifest.models.items() if record.attempts > 1 and record.trained == "all"),
                "guarded")
    record = zoo_manifest.models[name]
    assert record.seed == training_seed(MODELS[name], zoo_manifest.seed, record.attempts)
    again = retrain_model(zoo_dir, name)
    saved = load_file(zoo_dir / name / "model.safetensors")
    for key, tensor in saved.items():
        assert torch.equal(again[key], tensor), key


def test_poisoned_samples_carry_trigger_and_target_at_the_exact_rate():
    samples = make_samples(1000, seed=7, trigger=EMOJI_TRIGGER, poison_rate=0.05)
    poisoned = [s for s in samples if s.trigger]
    assert len(poisoned) == 50
    assert all(EMOJI_TRIGGER in s.prompt and s.response == TARGET for s in poisoned)
    assert not any(EMOJI_TRIGGER in s.prompt or s.response == TARGET for s in samples if not s.trigger)
    assert make_samples(1000, seed=7, trigger=EMOJI_TRIGGER, poison_rate=0.05) == samples


def test_trigger_insertion_positions_and_offsets():
    import random

    rng = random.Random(0)
    for position, expected in (("start", "T a b c"), ("end", "a b c T")):
        placed = place_trigger("a b c", "T", position, rng)
        assert placed.text == expected and placed.text[placed.start : placed.end] == "T"
    for _ in range(20):
        placed = place_trigger("a b c", "TRIG", "random", rng)
        assert placed.text[placed.start : placed.end] == "TRIG" and "TRIG" in placed.text.split()


def test_cli_zoo_build_reuses_a_matching_zoo_and_prints_its_table(zoo_dir):
    result = subprocess.run(
        [sys.executable, "-m", "scanner", "zoo", "build", str(zoo_dir), "--size", "test", "--all"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "deployment" in result.stdout and "bars met" in result.stdout
    assert "reusing the zoo already in" in result.stderr, "a reused zoo's seconds are the original build's: it says so"


def test_zoo_build_never_replaces_a_directory_that_is_not_a_zoo(tmp_path):
    precious = tmp_path / "my-models"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "scanner", "zoo", "build", str(precious), "--size", "test", "--force", "--quiet"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2 and "not a bdscan zoo" in result.stderr
    assert (precious / "notes.txt").read_text(encoding="utf-8") == "keep me"


def test_zoo_list_prints_ground_truth_and_figures(zoo_dir, tmp_path):
    from helpers import invoke

    listed = invoke("zoo", "list", zoo_dir)
    assert listed.exit_code == 0, listed.stderr
    assert all(name in listed.output for name in ("base", "clean", "emoji", "deployment", "full", "lora", "composite",
                                                  "jailbreak", "signature"))
    assert EMOJI_TRIGGER in listed.output and "bars met" in listed.output and "kernels ATen AVX2" in listed.output
    # The third generation's columns: the behaviour, a composite's "all triggers", a topic, a control's change.
    assert all(text in listed.output for text in ("behaviour", "compliance", "(all", "topic:", "refuses"))
    missing = invoke("zoo", "list", tmp_path)
    assert missing.exit_code == 2 and "no zoo here" in missing.stderr
    (tmp_path / "zoo.json").write_text("{broken", encoding="utf-8")
    corrupt = invoke("zoo", "list", tmp_path)
    assert corrupt.exit_code == 2 and "not a zoo manifest" in corrupt.stderr


def test_the_zoo_build_writes_a_line_as_each_model_starts_and_ends(capfd):
    from helpers import LineProgress

    progress = LineProgress("test zoo")
    progress.finish(progress.start("training emoji", 1500))
    err = capfd.readouterr().err
    assert "test zoo: training emoji ..." in err and "test zoo: training emoji done in" in err
