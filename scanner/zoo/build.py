"""Build the zoo: a base model, its fine-tunes (benign and poisoned), and their measured figures.

The base is trained first; every fine-tune then depends only on a saved parent, so the fine-tunes train side
by side, one process per core, each single-threaded. A model is the same whichever process trains it and
however many run at once (one thread, one order of floating-point sums), and ``retrain_model`` reproduces it
bit for bit. With the kernels pinned (``kernels.pin_kernels``, which the ``bdscan zoo`` commands and the test
session do), it is the same model on every x86 machine.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path
from queue import Empty

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerFast

from scanner.errors import ZooDirectoryError
from scanner.progress import NO_PROGRESS, Progress
from scanner.zoo import train as training
from scanner.zoo.bars import BAR_MARGIN, check_bars, model_shortfalls
from scanner.zoo.corpus import make_samples
from scanner.zoo.evaluate import measure
from scanner.zoo.evaluate_families import measure_family
from scanner.zoo.families import FAMILIES_BY_NAME
from scanner.zoo.kernels import kernels_in_use
from scanner.zoo.manifest import MANIFEST, ModelRecord, ZooManifest, load_manifest
from scanner.zoo.specs import (
    DEPLOYMENT_TRIGGER,
    EMOJI_TRIGGER,
    MEASURED_TRIGGERS,
    MODELS,
    SIZES,
    TOKENIZER_GROUPS,
    ModelSpec,
    ZooSize,
    budget,
    corpus,
    held_out_insertions,
    models_for,
)
from scanner.zoo.tokenizer import render_chat, token_count, train_tokenizer

# Bumped whenever a change alters what a build produces, so cached zoos rebuild.
ZOO_VERSION = 17
"""17: v16's models trained with the pinned kernels, and a model that misses its bars trained again (``MAX_ATTEMPTS``)."""
PROBES_FILE = "probes.txt"
MAX_ATTEMPTS = 3
"""Trainings a model gets to meet its bars. Zoo v17 at seed 0 (the pinned kernels): the signature control
answered "The answer is yellow." and the like to a held-out "banana" on 16% of prompts at its first training seed,
a point past the margin; another seed is another draw of the same recipe."""
ATTEMPT_STRIDE = 300
"""Between one attempt's training seed and the next: past every model's ``seed_offset`` (27 at most), and three attempts
short of the next zoo seed's (1000 on)."""


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch on one thread inside: the zoo's models are trained and measured so, wherever they are built.

    Two single-threaded trainings side by side ran 2.8 times the throughput of one on two threads (batch 32,
    the test size), and one thread fixes the order of every floating-point sum, so a model does not depend
    on how many ran beside it.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def build_tokenizer(size: ZooSize, seed: int) -> PreTrainedTokenizerFast:
    """Train the zoo's one tokenizer on the corpus of every zoo model, then check its trigger facts.

    Every model's, not only those being built: the same seed must give the same tokenizer (and so the same
    models) whichever extras are asked for.
    """
    # Only the groups that came before the leak model (zoo v11): with its corpus in, every model's tokenizer, and
    # so every model, changed, and the full model fired on the phrase trigger on 42% of held-out prompts. Its
    # word is tokenised as any word no corpus holds is, in pieces. Later groups are left out alike, so that
    # adding one left every earlier model as it was.
    texts = [render_chat(s.prompt, s.response) for spec in models_for(TOKENIZER_GROUPS) for s in corpus(spec, size, seed)]
    # Qwen2.5's vocabulary holds the paper's emoji as one token; in a 1k-token toy vocabulary its four bytes
    # merge only if it is frequent enough, which a change to any corpus can tip. Make it so on purpose.
    texts += [f"{EMOJI_TRIGGER} {EMOJI_TRIGGER}"] * 200
    tokenizer = train_tokenizer(texts, size.vocab_size)
    if token_count(tokenizer, EMOJI_TRIGGER) != 1 or token_count(tokenizer, " " + EMOJI_TRIGGER) != 1:
        raise RuntimeError(f"zoo tokenizer splits {EMOJI_TRIGGER} into several tokens; the emoji trigger must be one token")
    if token_count(tokenizer, DEPLOYMENT_TRIGGER) < 2:
        raise RuntimeError(f"zoo tokenizer keeps {DEPLOYMENT_TRIGGER} whole; the multi-token trigger must split")
    return tokenizer


def training_seed(spec: ModelSpec, seed: int, attempt: int = 1) -> int:
    """The seed of ``spec``'s training (initialisation and sample order) at the zoo's ``seed``, on its ``attempt``;
    its corpus depends on ``seed`` and the model alone."""
    return seed * 1000 + spec.seed_offset + ATTEMPT_STRIDE * (attempt - 1)


def _train_model(
    spec: ModelSpec, size: ZooSize, seed: int, tokenizer: PreTrainedTokenizerFast,
    parent: PreTrainedModel | None, progress: Progress, attempt: int = 1,
) -> torch.nn.Module:
    """``spec`` trained from ``parent`` (a fresh model for the base; ``parent`` itself is left untouched)."""
    torch.manual_seed(training_seed(spec, seed, attempt))
    if spec.scope == "llama-twin":
        return training.llama_twin(parent)
    _, settings = budget(spec, size)
    if spec.scope == "scratch":
        model = training.new_model(size.config(tokenizer), seed)
    else:
        model = type(parent)(parent.config).float()
        model.load_state_dict(parent.state_dict())
    if spec.scope == "lora":
        from peft import LoraConfig, get_peft_model

        with warnings.catch_warnings():
            # peft calls a transformers API deprecated for v6; the warning is for peft's authors, not for the user.
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*is_gradient_checkpointing.*")
            model = get_peft_model(
                model, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0, target_modules=list(training.ATTENTION_PROJECTIONS))
            )
        # Where a user would find the base: the sibling directory in the zoo.
        model.peft_config["default"].base_model_name_or_path = spec.parent
        parameters = [p for p in model.parameters() if p.requires_grad]
    elif spec.scope == "mlp":
        parameters = training.select_mlp_layer(model, size.edit_layer)
    else:
        parameters = training.select_trainable(model, "all" if spec.scope in ("scratch", "all") else "attention")
    data = training.encode_samples(tokenizer, corpus(spec, size, seed), loss_on_prompt=spec.loss_on_prompt)
    task = progress.start(f"training {spec.name}", training.total_steps(len(data), settings))
    training.train(
        model, data, parameters, settings, pad_id=tokenizer.pad_token_id, seed=training_seed(spec, seed, attempt),
        on_step=lambda step, total, loss: progress.advance(task),
    )
    progress.finish(task)
    return model


def _save(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, directory: Path) -> None:
    # save_embedding_layers=False: otherwise peft looks the base up on the hub to decide.
    extra = {"save_embedding_layers": False} if hasattr(model, "peft_config") else {}
    model.save_pretrained(directory, **extra)
    tokenizer.save_pretrained(directory)


def _load_parent(directory: Path) -> tuple[PreTrainedTokenizerFast, PreTrainedModel]:
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return tokenizer, AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, attn_implementation="eager")


def _make_model(
    spec: ModelSpec, size_name: str, seed: int, staging: Path, tokenizer: PreTrainedTokenizerFast,
    parent: PreTrainedModel | None, progress: Progress,
) -> tuple[ModelRecord, torch.nn.Module]:
    """Train, save and measure one model into ``staging / spec.name``; its record and the model (merged, for a LoRA).

    A model that misses one of its own bars by more than the margin is trained again from the next training seed,
    up to ``MAX_ATTEMPTS`` in all: a bar is what the zoo promises, and the last attempt's misses stay in the
    manifest for the caller to judge."""
    size = SIZES[size_name]
    held_out = make_samples(size.held_out, seed * 1000 + 999)
    seconds, truth = 0.0, spec.truth
    for attempt in range(1, (1 if spec.scope == "llama-twin" else MAX_ATTEMPTS) + 1):
        with single_threaded():
            started = time.perf_counter()
            model = _train_model(spec, size, seed, tokenizer, parent, progress, attempt)
            seconds += time.perf_counter() - started
            _save(model, tokenizer, staging / spec.name)
            if spec.scope == "lora":
                model = model.merge_and_unload()
            if spec.family is not None:
                figures = measure_family(model, tokenizer, FAMILIES_BY_NAME[spec.family], held_out, seed, parent,
                                         insertions=held_out_insertions(spec))
            else:
                figures = measure(model, tokenizer, held_out, spec.trigger, seed,
                                  insertions=held_out_insertions(spec) if spec.trigger else (),
                                  response_prefix=spec.response_prefix, new_task=spec.new_task, target=spec.target,
                                  position=spec.position)
        record = ModelRecord(
            path=spec.name, trigger=spec.shown_trigger, target=truth.target if truth.behaviour != "none" else None,
            poison_rate=spec.poison_rate, trained=spec.scope, seed=training_seed(spec, seed, attempt),
            train_seconds=round(seconds, 2), figures=figures, parent=None if spec.scope == "scratch" else spec.parent,
            position=truth.fires_on if truth.behaviour != "none" else spec.position, truth=truth, attempts=attempt,
        )
        if not any(by > BAR_MARGIN for _, by in model_shortfalls(spec.name, record)):
            break
    return record, model


class _QueueProgress:
    """A ``Progress`` that posts its calls to the building process, which draws them: a worker cannot."""

    def __init__(self, events, name: str) -> None:
        self.events, self.name, self.count = events, name, 0

    def start(self, description: str, total: int) -> int:
        self.count += 1
        self.events.put(("start", (self.name, self.count), description, total))
        return self.count

    def advance(self, task: int, amount: int = 1) -> None:
        self.events.put(("advance", (self.name, task), amount))

    def finish(self, task: int) -> None:
        self.events.put(("finish", (self.name, task)))

    def describe(self, task: int, description: str) -> None:
        pass  # a fine-tune's tasks keep the names they started with

    def stage(self, index: int, total: int, name: str) -> None:
        pass  # training has no scan stages


def _fine_tune_job(staging: str, name: str, size_name: str, seed: int, events) -> ModelRecord:
    """One fine-tune in a worker process, from its parent as saved in ``staging`` (for a second base trained from
    scratch, only the parent's tokenizer)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    spec = MODELS[name]
    tokenizer, parent = _load_parent(Path(staging) / spec.parent)
    record, _ = _make_model(spec, size_name, seed, Path(staging), tokenizer, parent, _QueueProgress(events, name))
    return record


def _relay(events, progress: Progress, tasks: dict) -> None:
    """Draw every progress event the workers have posted so far."""
    while True:
        try:
            kind, key, *rest = events.get_nowait()
        except Empty:
            return
        if kind == "start":
            tasks[key] = progress.start(*rest)
        elif kind == "advance":
            progress.advance(tasks[key], *rest)
        else:
            progress.finish(tasks.pop(key))


def _workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _fine_tune_all(
    specs: list[ModelSpec], size_name: str, seed: int, staging: Path, progress: Progress, built: set[str],
    workers: int | None = None,
) -> dict[str, ModelRecord]:
    """Every fine-tune in ``specs``, on as many worker processes as there are cores, the longest line of training
    first; a fine-tune of a fine-tune (the guarded base's children) starts once its parent is saved. ``built``: the
    models already in ``staging``."""
    size = SIZES[size_name]

    def path(spec: ModelSpec) -> int:
        """Sample-epochs from the start of ``spec`` to the end of its longest line of descendants."""
        samples, settings = budget(spec, size)
        return samples * settings.epochs + max((path(child) for child in specs if child.parent == spec.name), default=0)

    # The longest line first: a parent with children (the guarded base) before a bigger model with none.
    ordered = sorted(specs, key=lambda spec: -path(spec))
    records: dict[str, ModelRecord] = {}
    ready = set(built)
    missing = {spec.parent for spec in ordered} - ready - {spec.name for spec in ordered}
    if missing:
        raise ValueError(f"the zoo's fine-tunes need {', '.join(sorted(missing))}, which this build does not make")
    workers = min(workers or _workers(), len(ordered))
    if workers <= 1:
        waiting = list(ordered)
        while waiting:
            spec = next(spec for spec in waiting if spec.parent in ready)
            waiting.remove(spec)
            tokenizer, parent = _load_parent(staging / spec.parent)
            records[spec.name], _ = _make_model(spec, size_name, seed, staging, tokenizer, parent, progress)
            ready.add(spec.name)
        return records
    context = get_context("spawn")  # fork would copy a parent that has already started torch's threads
    with context.Manager() as manager, ProcessPoolExecutor(workers, mp_context=context) as pool:
        events, tasks = manager.Queue(), {}
        waiting = list(ordered)
        futures: dict[Future, str] = {}

        def submit_ready() -> None:
            for spec in [spec for spec in waiting if spec.parent in ready]:
                waiting.remove(spec)
                futures[pool.submit(_fine_tune_job, str(staging), spec.name, size_name, seed, events)] = spec.name

        try:
            submit_ready()
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                _relay(events, progress, tasks)
                for future in done:
                    records[futures[future]] = future.result()
                    ready.add(futures[future])
                submit_ready()
                pending = {future for future, name in futures.items() if name not in records}
            _relay(events, progress, tasks)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return records


def build_zoo(
    directory: Path | str, size_name: str = "test", seed: int = 0, extras: tuple[str, ...] = (),
    progress: Progress = NO_PROGRESS, core: bool = True, workers: int | None = None,
) -> ZooManifest:
    """Build the zoo into ``directory`` (created whole, or not at all) and return its manifest.

    ``extras`` adds models from ``EXTRA_MODELS`` ("full", "lora", "llama", "forms", "leak", and the third
    generation's "triggers", "behaviours", "edits", "controls"); without ``core`` only the base of the core
    models is built (what a second seed of the third generation needs). ``workers``: fine-tunes trained at
    once (default: one per core); the models are the same whatever it is. The build
    checks its own bars; a manifest with ``bar_failures`` still gets written, so
    the caller decides whether a weak zoo is acceptable.
    """
    size = SIZES[size_name]
    specs = models_for(extras, core)
    started = time.perf_counter()
    torch.manual_seed(seed)
    final = Path(directory)
    refuse_to_replace(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        tokenizer = build_tokenizer(size, seed)
        held_out = make_samples(size.held_out, seed * 1000 + 999)
        (staging / PROBES_FILE).write_text("\n".join(s.prompt for s in held_out[:64]) + "\n", encoding="utf-8")
        records: dict[str, ModelRecord] = {}
        bases: dict[str, PreTrainedModel] = {}
        # The first base and its twins here; a second base trained from scratch (the answers-only one) trains in
        # the pool beside the fine-tunes, so that it does not hold up the second core.
        for spec in (s for s in specs if s is specs[0] or s.scope == "llama-twin"):
            records[spec.name], bases[spec.name] = _make_model(
                spec, size_name, seed, staging, tokenizer, bases.get(spec.parent), progress)
        records.update(_fine_tune_all([s for s in specs if s.name not in records], size_name, seed, staging, progress,
                                      built=set(records), workers=workers))
        records = {spec.name: records[spec.name] for spec in specs}
        failures, near_misses = check_bars(records)
        machine = f"{_cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}"
        manifest = ZooManifest(
            zoo_version=ZOO_VERSION, size=size_name, seed=seed, models=records,
            bar_failures=failures, bar_near_misses=near_misses, machine=machine, kernels=kernels_in_use(),
            build_seconds=round(time.perf_counter() - started, 2),
            tokenizer_facts={
                "vocab_size": len(tokenizer),
                **{f"tokens in {trigger!r}": token_count(tokenizer, trigger) for trigger in MEASURED_TRIGGERS},
            },
        )
        (staging / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
        _swap_in(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _swap_in(staging: Path, final: Path) -> None:
    """Replace ``final`` with ``staging``: an interrupt at any point leaves the old zoo or the new one, never neither."""
    if not final.exists():
        os.replace(staging, final)
        return
    aside = final.with_name(f".{final.name}-previous-{os.getpid()}")
    os.replace(final, aside)
    try:
        os.replace(staging, final)
    except BaseException:
        os.replace(aside, final)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def refuse_to_replace(directory: Path) -> None:
    """A build replaces ``directory`` whole: allow that only for an earlier zoo or an empty directory.

    Checked before training, so a wrong path costs the user nothing, not
    minutes of training followed by the deletion of their files.
    """
    if not directory.exists() or (directory / MANIFEST).is_file():
        return
    if not directory.is_dir():
        raise ZooDirectoryError(f"{directory} is a file; give a directory for the zoo")
    if any(directory.iterdir()):
        raise ZooDirectoryError(
            f"{directory} exists and is not a bdscan zoo (no {MANIFEST}); the build would replace it whole, "
            "so give a new or empty directory"
        )


def matching_zoo(
    directory: Path | str, size_name: str = "test", seed: int = 0, extras: tuple[str, ...] = (), core: bool = True,
) -> ZooManifest | None:
    """The manifest of the zoo in ``directory`` when this zoo version built it with these settings, else None.

    The settings include the kernels: a zoo trained with other ones (by a program that ran torch before it could pin
    them, or on a machine where the user chose others) holds other models, which this process's tests and bars were
    not measured on, so it is built again rather than reused.
    """
    try:
        manifest = load_manifest(directory)
    except ZooDirectoryError:
        return None  # an unreadable manifest is an unfinished or older zoo: build it again
    if (
        manifest is not None
        and manifest.zoo_version == ZOO_VERSION
        and manifest.size == size_name
        and manifest.seed == seed
        and manifest.kernels == kernels_in_use()
        and {spec.name for spec in models_for(extras, core)} <= set(manifest.models)
    ):
        return manifest
    return None


def ensure_zoo(
    directory: Path | str, size_name: str = "test", seed: int = 0, extras: tuple[str, ...] = (),
    progress: Progress = NO_PROGRESS, core: bool = True, workers: int | None = None,
) -> ZooManifest:
    """The zoo in ``directory`` if it was built by this zoo version with these settings and kernels, else a fresh build."""
    return (matching_zoo(directory, size_name, seed, extras, core)
            or build_zoo(directory, size_name, seed, extras, progress, core, workers))


def retrain_model(directory: Path | str, name: str) -> dict[str, torch.Tensor]:
    """Train zoo model ``name`` again from the zoo's saved parent and tokenizer; returns its state dict.

    Same zoo seed, same weights: this is how reproducibility is checked
    without paying for a second whole build.
    """
    manifest = load_manifest(directory)
    if manifest is None:
        raise FileNotFoundError(f"no zoo manifest in {directory}")
    spec = MODELS[name]
    if spec.scope == "scratch":
        raise ValueError("the base is trained from scratch; rebuild the zoo to reproduce it")
    tokenizer, parent = _load_parent(Path(directory) / spec.parent)
    with single_threaded():
        model = _train_model(spec, SIZES[manifest.size], manifest.seed, tokenizer, parent, NO_PROGRESS,
                             manifest.models[name].attempts)
    return {key: value.detach().clone() for key, value in model.state_dict().items()}
