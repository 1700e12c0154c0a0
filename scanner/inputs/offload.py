"""Models larger than memory: both models' weights beyond a cap offloaded to disk by accelerate.

``--max-memory SIZE`` gives the two models' weights ``SIZE`` on the device, half each. accelerate's
``infer_auto_device_map`` keeps the first modules that fit there (the embeddings, then whole decoder layers) and
maps the rest to ``"disk"``: their parameters stay on the meta device, and a hook on each module reads its weights
from the offload folder before the module runs and drops them after. The suspect gets the reference's map, so the
same layers are resident in both and every comparison reads like with like.

Nothing in the scan may read an offloaded parameter directly (it would read the meta device's empty tensor): the
weights a measurement reads go through ``scanner.model.sites.module_tensor``, which loads them for the read, and the
device inputs go to is ``scanner.model.sites.input_device``, not a parameter's.
"""

from __future__ import annotations

import copy
import math
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from scanner.errors import InputError, ResourceError

DISK = "disk"


@dataclass(frozen=True)
class OffloadPlan:
    """How much of each model stays on ``device`` and where the rest goes."""

    per_model: int
    """Bytes of weights each model keeps on ``device``."""
    device: torch.device
    owned: tempfile.TemporaryDirectory = field(compare=False, repr=False)
    """A folder of this scan's own (in ``--offload-dir`` or the system's temporary folder) holding ``reference/``
    and ``suspect/``, accelerate's offloaded tensors and their index; removed with the plan when the scan lets go of
    its reference, or at exit."""

    @property
    def folder(self) -> Path:
        return Path(self.owned.name)

    def max_memory(self) -> dict:
        """accelerate's ``max_memory``: the cap on the device the models run on; nothing else is offered but disk."""
        key = "cpu" if self.device.type == "cpu" else (self.device.index or 0)
        return {key: self.per_model}


def plan_offload(max_memory: int, offload_dir: str | None, device: torch.device, model_bytes: float) -> OffloadPlan:
    """Make the scan's offload folder and check that it has room for what may go there (both models' weights
    beyond the cap), before a weight is read."""
    parent = None if offload_dir is None else Path(offload_dir).expanduser()
    try:
        if parent is not None:
            parent.mkdir(parents=True, exist_ok=True)
        owned = tempfile.TemporaryDirectory(prefix="bdscan-offload-", dir=parent)
    except OSError as error:
        raise InputError(f"--offload-dir {parent}: cannot write there ({error.strerror or error})") from None
    per_model = max_memory // 2
    spill = 2 * max(0.0, model_bytes - per_model)
    free = shutil.disk_usage(owned.name).free
    if spill > free:
        owned.cleanup()
        gib = 1024 ** 3
        raise ResourceError(
            f"offloading needs about {spill / gib:.1f} GiB on disk at {parent or Path(owned.name).parent} (both "
            f"models' weights beyond --max-memory) but {free / gib:.1f} GiB is free; give --offload-dir on a disk "
            "with room")
    return OffloadPlan(per_model, device, owned)


def load_offloaded_checkpoint(directory: Path, dtype: torch.dtype, plan: OffloadPlan) -> PreTrainedModel:
    """The reference from its checkpoint directory, placed by accelerate under ``plan``'s cap."""
    return AutoModelForCausalLM.from_pretrained(
        directory, dtype=dtype, attn_implementation="eager", trust_remote_code=False, device_map="auto",
        max_memory=plan.max_memory(), offload_folder=str(plan.folder / "reference"))


def load_offloaded_suspect(reference: PreTrainedModel, state: Mapping[str, torch.Tensor], dtype: torch.dtype,
                           plan: OffloadPlan) -> PreTrainedModel:
    """The reference's architecture with ``state``'s tensors (keys and shapes already checked against the
    reference's by ``check_state_dict``), on the reference's device map: resident where the reference's modules
    are, written to the offload folder where they are offloaded. A tensor at a time is read and placed, so a
    suspect larger than memory never is in memory (accelerate's ``load_checkpoint_in_model`` reads a whole file)."""
    from accelerate import dispatch_model, init_empty_weights
    from accelerate.utils import offload_weight, save_offload_index, set_module_tensor_to_device

    config = copy.deepcopy(reference.config)
    with init_empty_weights():
        model = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]._from_config(config, dtype=dtype, attn_implementation="eager")
    model.tie_weights()
    device_map = dict(reference.hf_device_map)
    folder = plan.folder / "suspect"
    folder.mkdir(parents=True, exist_ok=True)
    # Every name a parameter has (a tied head is its embedding's parameter under a second name), and where in the
    # file its values are: accelerate reads an offloaded module's weights by the module's own names.
    by_object: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        by_object.setdefault(id(parameter), []).append(name)
    index: dict = {}
    for names in by_object.values():
        source = next((name for name in names if name in state), None)
        if source is None:
            continue  # not in the files: check_state_dict allowed it (a tied head), and tie_weights fills it
        tensor = state[source].to(dtype)
        for name in names:
            placement = device_map[_owner(device_map, name)]
            if placement == DISK:
                index = offload_weight(tensor, name, folder, index=index)
            elif name == names[0] or device_map[_owner(device_map, names[0])] == DISK:
                set_module_tensor_to_device(model, name, placement, value=tensor)
        del tensor
    model.tie_weights()  # setting a tensor replaced its parameter; its second names follow it again
    save_offload_index(index, folder)
    model = dispatch_model(model, device_map=device_map, offload_dir=folder if index else None,
                           skip_keys=getattr(model, "_skip_keys_device_placement", None))
    model.generation_config = copy.deepcopy(reference.generation_config)
    return model.eval().requires_grad_(False)


def _owner(device_map: dict[str, object], name: str) -> str:
    """The device map's entry that places parameter ``name``: the longest module path that prefixes it."""
    parts = name.split(".")
    for end in range(len(parts), -1, -1):
        prefix = ".".join(parts[:end])
        if prefix in device_map:
            return prefix
    raise KeyError(name)


def resident_bytes(model: PreTrainedModel) -> int:
    """Bytes of ``model``'s parameters held on a device (offloaded ones, on the meta device, not counted)."""
    seen: set[int] = set()
    total = 0
    for parameter in model.parameters():
        if parameter.device.type != "meta" and id(parameter) not in seen:
            seen.add(id(parameter))
            total += math.prod(parameter.shape) * parameter.element_size()
    return total
