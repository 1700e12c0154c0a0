"""Load the reference and the suspect into memory, refusing what does not match.

The suspect is always loaded into a fresh copy of the reference's architecture
(never through its own config), so a suspect can only differ in weights, and a
mismatch is caught here, listed, and refused. The architecture is checked from
``config.json`` before any weight is read.
"""

from __future__ import annotations

import copy
import math
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from scanner.errors import IncompatibleModelsError, InputError, ResourceError
from scanner.findings import Architecture, InputInfo
from scanner.inputs.checks import check_safetensors, read_json_object, refuse_custom_code
from scanner.inputs.families import check_supported
from scanner.inputs.locate import (
    check_suspect_files,
    detect_suspect_kind,
    input_info,
    refuse_offloaded,
    resolve_reference,
    weight_files,
)
from scanner.inputs.offload import OffloadPlan, load_offloaded_checkpoint, load_offloaded_suspect, plan_offload
from scanner.inputs.placement import check_quantisation, load_arguments, resolve_device, weight_bytes
from scanner.inputs.tensor_files import SafetensorsFiles

PICKLE_ADVICE = (
    "loading a pickle can run code its author chose. Convert it to safetensors first "
    "(safetensors.torch.save_file(torch.load(path, weights_only=True), 'model.safetensors')), "
    "or pass --allow-pickle to load it with torch.load(weights_only=True)"
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MAX_LISTED_MISMATCHES = 5
# The fields that make two configs the same architecture, as a user would name them.
ARCHITECTURE_FIELDS = ("model_type", "num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads",
                       "intermediate_size", "vocab_size")
# torch.OutOfMemoryError exists only from torch 2.5; the CUDA one is the same class there.
OUT_OF_MEMORY = (MemoryError, torch.cuda.OutOfMemoryError)


@dataclass(frozen=True)
class LoadedPair:
    reference: PreTrainedModel
    suspect: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    tokenizer_file: Path | None
    """The reference's ``tokenizer.json``, which the scan checks ``tokenizer`` against."""
    reference_info: InputInfo
    suspect_info: InputInfo
    merge_route: str
    offload: OffloadPlan | None = None
    """Where the weights beyond ``--max-memory`` are: held here so that its folder lives as long as the models."""

    def with_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> LoadedPair:
        return replace(self, tokenizer=tokenizer)


def _describe(config: dict) -> str:
    return ", ".join(f"{name} {config.get(name)}" for name in ARCHITECTURE_FIELDS if name in config)


def check_same_architecture(suspect_config: dict, reference_config: dict, suspect: Path, reference: Path) -> None:
    """Refuse a suspect whose own config names another architecture, naming both."""
    differing = [name for name in ARCHITECTURE_FIELDS
                 if name in suspect_config and suspect_config.get(name) != reference_config.get(name)]
    if differing:
        raise IncompatibleModelsError(
            f"suspect {suspect} is {_describe(suspect_config)}; reference {reference} is {_describe(reference_config)}: "
            f"they differ in {', '.join(differing)}, so the reference cannot vouch for this suspect"
        )


def _load_model(directory: Path, dtype: torch.dtype, device: torch.device, quantisation: str = "none",
                state_dict: dict[str, torch.Tensor] | None = None, offload: OffloadPlan | None = None) -> PreTrainedModel:
    """``directory``'s architecture with its weights, or with ``state_dict``'s where given; placed by accelerate
    under ``offload``'s cap where given."""
    arguments = load_arguments(dtype, device, quantisation)
    if offload is not None:
        model = load_offloaded_checkpoint(directory, dtype, offload)
    elif state_dict is not None:
        # transformers takes given tensors only without a checkpoint to read, from the checkpoint's config; its
        # generation settings (Qwen2.5-Instruct's repetition penalty) must then be read as the reference's are.
        config = AutoConfig.from_pretrained(directory, trust_remote_code=False)
        model = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)].from_pretrained(
            None, config=config, state_dict=state_dict, dtype=dtype, attn_implementation="eager", **arguments)
        if (directory / "generation_config.json").is_file():
            model.generation_config = GenerationConfig.from_pretrained(directory)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            directory, dtype=dtype, attn_implementation="eager", trust_remote_code=False, **arguments)
    if getattr(model.config, "head_dim", None) is None:
        # transformers 5 may leave head_dim unset; pyvene's head sites need it.
        model.config.head_dim = model.config.hidden_size // model.config.num_attention_heads
    if quantisation == "none" and offload is None:
        model = model.to(device)
    return model.eval().requires_grad_(False)


def describe_state(state: dict[str, tuple[int, ...]]) -> str:
    """A checkpoint's shape as its tensors tell it: layers, hidden size, vocabulary."""
    layers = {int(m.group(1)) for key in state if (m := re.search(r"\blayers\.(\d+)\.", key))}
    embedding = next((value for key, value in state.items() if key.endswith("embed_tokens.weight")), None)
    shape = tuple(embedding or ())
    parts = [f"{max(layers) + 1} layers" if layers else "no layers"]
    if len(shape) == 2:
        parts += [f"hidden_size {shape[1]}", f"vocab_size {shape[0]}"]
    return ", ".join(parts)


def check_state_dict(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], optional: set[str]) -> None:
    """Refuse ``found`` unless its keys and shapes are ``expected``'s (``optional`` keys may be absent), naming both
    checkpoints' shapes and the first mismatches."""
    problems = []
    for key in sorted(set(expected) - set(found) - optional):
        problems.append(f"missing {key}")
    for key in sorted(set(found) - set(expected)):
        problems.append(f"unexpected {key}")
    for key in sorted(set(found) & set(expected)):
        if tuple(found[key]) != tuple(expected[key]):
            problems.append(f"{key}: shape {tuple(found[key])} vs reference {tuple(expected[key])}")
    if problems:
        shown = "; ".join(problems[:MAX_LISTED_MISMATCHES])
        more = f" (and {len(problems) - MAX_LISTED_MISMATCHES} more)" if len(problems) > MAX_LISTED_MISMATCHES else ""
        raise IncompatibleModelsError(
            f"suspect ({describe_state(found)}) does not match the reference's architecture ({describe_state(expected)}): "
            f"{shown}{more}")


def checkpoint_keys(shapes: dict[str, list[int]], tied: set[str]) -> dict[str, tuple[int, ...]]:
    """The tensors a suspect may hold, from the reference checkpoint's ``shapes``: a tied checkpoint leaves its output
    head out, and a suspect that writes it (as ``state_dict()`` does) holds the embedding's shape there."""
    expected = {k: tuple(v) for k, v in shapes.items()}
    embedding = next((v for k, v in expected.items() if k.endswith("embed_tokens.weight")), None)
    expected.update({key: embedding for key in tied if embedding is not None and key not in expected})
    return expected


def _tied_keys(model: PreTrainedModel) -> set[str]:
    if getattr(model.config, "tie_word_embeddings", False):
        return {"lm_head.weight"}
    return set()


def _shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return dict(state.shapes) if isinstance(state, SafetensorsFiles) else {k: tuple(v.shape) for k, v in state.items()}


def _read_state(suspect_path: Path, kind: str, allow_pickle: bool) -> Mapping[str, torch.Tensor]:
    """The suspect's tensors, every file checked before a loader touches it; safetensors are read lazily."""
    files = weight_files(suspect_path, kind)
    for file in files:
        if not file.is_file():
            raise InputError(f"suspect {suspect_path}: weight file {file.name} listed in the index is missing")
    if not kind.startswith("pickle"):
        return SafetensorsFiles(files)
    state: dict[str, torch.Tensor] = {}
    for file in files:
        if not allow_pickle:
            raise InputError(f"suspect {file} is a pickle-based checkpoint: {PICKLE_ADVICE}")
        try:
            loaded = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - whatever the unpickler refused, the file is refused
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise InputError(f"suspect {file}: torch.load(weights_only=True) refused it: {first}") from None
        if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
            raise InputError(f"suspect {file}: not a state dict of tensors")
        state.update(loaded)
    return state


# Reference and suspect resident together, plus the suspect's tensors as read: a pickle whole; a safetensors file a
# tensor at a time (SafetensorsFiles), for which the third copy is an upper bound. Activations come on top.
MODEL_COPIES = 3
ACTIVATION_HEADROOM = 512 * 1024 * 1024


def available_bytes(device: torch.device) -> int:
    """Memory free for the scan on ``device``: CUDA's free memory, else the kernel's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(shapes: dict[str, list[int]], dtype: str, device: torch.device, quantisation: str = "none",
                 offload: OffloadPlan | None = None) -> None:
    """Refuse before loading when both models cannot fit (``shapes``: the reference's tensor shapes), or, under
    ``offload``, the part of them its cap keeps; the message says what to try instead."""
    parameters = sum(math.prod(shape) for shape in shapes.values())
    one_model = weight_bytes(shapes, DTYPES[dtype].itemsize, quantisation)
    largest = max((math.prod(shape) for shape in shapes.values()), default=0) * DTYPES[dtype].itemsize
    # Under a cap: both capped models and the suspect's largest tensor on its way to its place or to disk.
    needed = (one_model * MODEL_COPIES if offload is None else 2 * min(one_model, offload.per_model) + largest) \
        + ACTIVATION_HEADROOM
    free = available_bytes(device)
    # What --max-memory could give the weights here: the rest is the tensor on its way and the activations.
    room = int(0.9 * (free - largest - ACTIVATION_HEADROOM)) if quantisation == "none" else 0
    if offload is not None and needed > free:
        gib = 1024 ** 3
        raise ResourceError(f"--max-memory keeps about {needed / gib:.1f} GiB on {device.type} (both models' resident "
                            f"weights and working memory) but {free / gib:.1f} GiB is free; give a smaller --max-memory")
    if needed > free:
        gib = 1024 ** 3
        advice = "try --dtype bfloat16" if dtype == "float32" else "try a machine or device with more memory"
        form = dtype if quantisation == "none" else f"{dtype} with {quantisation} linear layers"
        raise ResourceError(
            f"the scan needs about {needed / gib:.1f} GiB on {device.type} ({parameters:,} parameters at {form}, "
            f"two models loaded) but {free / gib:.1f} GiB is free; {advice}"
            + (", or --device cuda" if device.type != "cuda" else ", or --load-in-4bit (bitsandbytes)" if quantisation == "none" else "")
            + (f", or --max-memory {room // 10 ** 6}MB to offload what does not fit to disk" if room > 0 else "")
        )


@dataclass(frozen=True)
class LoadedReference:
    """The trusted model, loaded once: a fleet of suspects is scanned against the same copy."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    directory: Path
    config: dict
    info: InputInfo
    dtype: str
    device: torch.device
    shapes: dict[str, list[int]]
    """Every tensor's shape in the reference's checkpoint: what a suspect's tensors must match."""
    quantisation: str = "none"
    """``none``, ``4bit`` or ``8bit`` (bitsandbytes); the suspect is loaded the same way."""
    offload: OffloadPlan | None = None
    """Where weights beyond ``--max-memory`` go; the suspect is placed on the reference's device map."""


def load_reference(reference: str, *, dtype: str = "float32", device: str = "cpu", allow_download: bool = False,
                   quantisation: str = "none", max_memory: int | None = None,
                   offload_dir: str | None = None) -> LoadedReference:
    """Load the reference (eager attention, ``dtype``, on ``device``, quantised as ``quantisation`` says, its
    weights beyond half of ``max_memory`` offloaded to ``offload_dir``) and its tokenizer, after checking that it
    and a suspect of its size fit in memory. Nothing here runs code from the checkpoint."""
    torch_dtype = DTYPES[dtype]
    target = resolve_device(device)
    check_quantisation(quantisation, target)
    reference_dir, reference_kind = resolve_reference(reference, allow_download)
    refuse_custom_code(reference_dir, "reference")
    reference_config = read_json_object(reference_dir / "config.json", "reference")
    check_supported(reference_config.get("model_type"), f"reference {reference_dir}")
    reference_weights = sorted(reference_dir.glob("*.safetensors"))
    if not reference_weights:
        raise InputError(
            f"reference {reference_dir} has no .safetensors weights; bdscan never unpickles a reference: "
            "convert it with safetensors.torch.save_file"
        )
    shapes = {name: entry["shape"] for file in reference_weights for name, entry in check_safetensors(file).items()}
    offload = None
    if max_memory is not None:
        offload = plan_offload(max_memory, offload_dir, target, weight_bytes(shapes, torch_dtype.itemsize, "none"))
    check_memory(shapes, dtype, target, quantisation, offload)
    try:
        model = _load_model(reference_dir, torch_dtype, target, quantisation, offload=offload)
    except OUT_OF_MEMORY:
        raise ResourceError(f"out of memory while loading the reference on {target.type} at {dtype}; "
                            "try --dtype bfloat16 or a device with more memory") from None
    tokenizer = AutoTokenizer.from_pretrained(reference_dir, trust_remote_code=False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    info = input_info(reference_dir, reference_kind if reference_kind == "hf-cache" else "hf-directory")
    return LoadedReference(model, tokenizer, reference_dir, reference_config, info, dtype, target, shapes, quantisation,
                           offload)


def load_suspect(reference: LoadedReference, suspect: Path | str, *, allow_pickle: bool = False) -> LoadedPair:
    """Load ``suspect`` into a fresh copy of the reference's architecture, refusing what does not match.

    Pickles are refused unless ``allow_pickle`` (then only ``torch.load(weights_only=True)``), and
    configurations that ask for custom code are refused.
    """
    torch_dtype = DTYPES[reference.dtype]
    suspect_path = Path(suspect).expanduser()
    kind = detect_suspect_kind(suspect_path)
    if suspect_path.is_dir():
        refuse_custom_code(suspect_path, "suspect")
        if kind != "peft-adapter" and (suspect_path / "config.json").is_file():
            check_same_architecture(read_json_object(suspect_path / "config.json", "suspect"), reference.config,
                                    suspect_path, reference.directory)
    if kind == "peft-adapter":
        adapter_weights = sorted(suspect_path.glob("adapter_model*.safetensors"))
        if not adapter_weights and not allow_pickle:
            raise InputError(f"suspect adapter {suspect_path} has no adapter_model.safetensors: {PICKLE_ADVICE}")
        check_suspect_files(suspect_path)
    if reference.offload is not None:
        refuse_offloaded(suspect_path, kind)
    state = None if kind == "peft-adapter" else _read_state(suspect_path, kind, allow_pickle)
    quantised = reference.quantisation != "none"
    tied = _tied_keys(reference.model)
    try:
        merge_route = "full-weights"
        if kind == "peft-adapter":
            suspect_model = _load_model(reference.directory, torch_dtype, reference.device, reference.quantisation)
            suspect_model = _merge_adapter(suspect_model, suspect_path)
            merge_route = f"peft-merge:{reference.dtype}" + ("" if reference.quantisation == "none" else f"-{reference.quantisation}")
        elif quantised:
            # bitsandbytes quantises the suspect's own tensors as it loads them (all of them read first); a quantised
            # reference's tensors are packed, so its checkpoint's shapes, with any tied head, are what they must match.
            check_state_dict(checkpoint_keys(reference.shapes, tied), _shapes(state), tied)
            suspect_model = _load_model(reference.directory, torch_dtype, reference.device, reference.quantisation,
                                        state_dict={k: v.to(torch_dtype) for k, v in state.items()})
        elif reference.offload is not None:
            check_state_dict(checkpoint_keys(reference.shapes, tied), _shapes(state), tied)
            suspect_model = load_offloaded_suspect(reference.model, state, torch_dtype, reference.offload)
        else:
            # A copy of the reference in memory, not its checkpoint read again: that paged its file in beside the
            # reference and the suspect's own (SafetensorsFiles' docstring has the figures).
            suspect_model = copy.deepcopy(reference.model)
            mine = suspect_model.state_dict()  # the model's own tensors: copying into them loads the suspect
            check_state_dict({k: tuple(v.shape) for k, v in mine.items()}, _shapes(state), tied)
            with torch.no_grad():
                for key in state:
                    if isinstance(state, SafetensorsFiles):
                        state.copy_into(key, mine[key])
                    else:
                        mine[key].copy_(state[key])
    except OUT_OF_MEMORY:
        raise ResourceError(
            f"out of memory while loading the suspect beside the reference on {reference.device.type} at "
            f"{reference.dtype}; try --dtype bfloat16 or a device with more memory"
        ) from None
    tokenizer_file = reference.directory / "tokenizer.json"
    return LoadedPair(
        reference=reference.model,
        suspect=suspect_model,
        tokenizer=reference.tokenizer,
        tokenizer_file=tokenizer_file if tokenizer_file.is_file() else None,
        reference_info=reference.info,
        suspect_info=input_info(suspect_path, kind),
        merge_route=merge_route,
        offload=reference.offload,
    )


def load_pair(
    suspect: Path | str, reference: str, *, dtype: str = "float32", device: str = "cpu", allow_download: bool = False,
    allow_pickle: bool = False, max_memory: int | None = None, offload_dir: str | None = None,
) -> LoadedPair:
    """Load both models (eager attention, ``dtype``, on ``device``, offloaded beyond ``max_memory``) and the
    reference's tokenizer."""
    loaded = load_reference(reference, dtype=dtype, device=device, allow_download=allow_download,
                            max_memory=max_memory, offload_dir=offload_dir)
    return load_suspect(loaded, suspect, allow_pickle=allow_pickle)


_LORA_KEY = re.compile(r"(?:^|\.)(layers\.\d+\..+?)\.lora_([AB])(?:\.[^.]+)?\.weight$")


def check_adapter_fits(model: PreTrainedModel, adapter_dir: Path) -> None:
    """Refuse an adapter made for another base before peft tries it, naming the base it was made for and the first
    modules whose shapes differ (peft's own error stops at "Error(s) in loading state_dict for PeftModel:")."""
    config = read_json_object(adapter_dir / "adapter_config.json", "suspect adapter")
    problems = []
    for file in sorted(adapter_dir.glob("adapter_model*.safetensors")):
        for key, entry in check_safetensors(file).items():
            match = _LORA_KEY.search(key)
            if not match or len(entry["shape"]) != 2:
                continue
            path, factor = match.groups()
            try:
                module = model.model.get_submodule(path)
            except AttributeError:
                problems.append(f"{path} is not a module of the reference")
                continue
            rank_side, model_side = (entry["shape"][1], module.in_features) if factor == "A" else (entry["shape"][0], module.out_features)
            if rank_side != model_side:
                side = "inputs" if factor == "A" else "outputs"
                problems.append(f"{path} has {model_side} {side} in the reference, {rank_side} in lora_{factor}")
    if problems:
        shown = "; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
        base = config.get("base_model_name_or_path")
        raise IncompatibleModelsError(
            f"adapter {adapter_dir} was made for {base!r}, not for this reference "
            f"({_describe(model.config.to_dict())}): {shown}"
        )


def _merge_adapter(model: PreTrainedModel, adapter_dir: Path) -> PreTrainedModel:
    from peft import PeftModel

    check_adapter_fits(model, adapter_dir)
    try:
        with warnings.catch_warnings():
            # peft calls a transformers API deprecated for v6; the warning is for peft's authors, not for the user.
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*is_gradient_checkpointing.*")
            merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise IncompatibleModelsError(f"adapter {adapter_dir} does not fit the reference: {first_line}") from None
    return merged.eval().requires_grad_(False)


def _distinct_parameters(model: PreTrainedModel) -> int:
    """Numbers in ``model``'s parameters, a tied head counted once: accelerate's offload gives a tied head a
    parameter object of its own, so identity does not tell (the tied names do)."""
    tied = _tied_keys(model)
    return sum(p.numel() for name, p in model.named_parameters(remove_duplicate=False) if name not in tied) \
        if tied else sum(p.numel() for p in model.parameters())


def architecture(model: PreTrainedModel, shapes: dict[str, list[int]] | None = None) -> Architecture:
    """``shapes`` (the checkpoint's tensor shapes), where given, count the parameters: bitsandbytes packs two 4-bit
    weights into one stored number."""
    config = model.config
    return Architecture(
        model_type=config.model_type,
        layers=config.num_hidden_layers,
        heads=config.num_attention_heads,
        kv_heads=getattr(config, "num_key_value_heads", config.num_attention_heads),
        head_dim=config.head_dim,
        hidden_size=config.hidden_size,
        vocab_size=config.vocab_size,
        parameters=sum(math.prod(s) for s in shapes.values()) if shapes else _distinct_parameters(model),
    )
