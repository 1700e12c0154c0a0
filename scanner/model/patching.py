"""One generic head-patching engine, through pyvene.

Patching a head means replacing its whole contribution to the residual stream,
``z_h @ W_O[:, h]^T`` (its ``o_proj`` input times its slice of ``o_proj``),
with a source's. Swapping only ``z_h`` would keep the suspect's own ``o_proj``
slice, and attention-only fine-tunes change ``o_proj``: with every head
swapped that way the suspect would still not be the reference.

pyvene cannot express "another model's ``o_proj``" at one site, so a patch
is two pyvene interventions per layer:

1. at ``attention_value_output`` (the ``o_proj`` input): ``z_h <- source_h``
   for the masked heads;
2. at ``attention_output`` (the attention block's output): add
   ``source_h @ (W_source[:, h] - W_suspect[:, h])^T`` for the masked heads,
   a term that depends only on cached source activations.

Together they give ``sum_{h not patched} z_h W_h^T + sum_{h patched} source_h W_source_h^T``.
Mean ablation is the same engine with the source ``z`` set to a mean and no
weight correction. Each row of the batch carries its own head mask, so many
head configurations run in one forward.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from scanner.model.residual import ResidualCache
from scanner.model.sites import Sites

with contextlib.redirect_stdout(io.StringIO()):
    # pyvene 0.1.8 prints a line about nnsight at import; stdout may be a JSON document.
    import pyvene


@dataclass(frozen=True)
class PatchSource:
    """What patched heads become, per layer.

    ``values[layer]``: ``[rows, seq, heads * head_dim]`` replacement ``o_proj`` inputs, where the patched batch is
    whole repeats of ``rows`` (configuration-major: several configurations of the same probes share one copy), or
    ``[1, 1, heads * head_dim]`` for a mean.
    ``o_proj_delta[layer]``: ``[hidden, heads * head_dim]`` source minus suspect
    ``o_proj`` weight, or ``None`` when the source used the suspect's own ``o_proj``.
    """

    values: tuple[torch.Tensor, ...]
    o_proj_delta: tuple[torch.Tensor, ...] | None


class _HeadSwap(pyvene.SourcelessIntervention):
    """``o_proj`` input: masked heads take the source's value. Shapes ``[batch, seq, heads * head_dim]``."""

    def __init__(self, heads: int, head_dim: int) -> None:
        super().__init__(keep_last_dim=True)
        self.heads, self.head_dim = heads, head_dim
        self.source: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None  # [batch, heads] bool

    def forward(self, base, source=None, subspaces=None):
        if self.mask is None:
            return base
        batch, seq, _ = base.shape
        # .to(): pyvene hands over a module's input before accelerate's hook moves it to the module's device, and the
        # source was captured where the scan computes; both are no-ops on one device.
        replacement, times = _per_configuration(self.source.to(base.device), batch, self.heads, self.head_dim)
        value = base.view(times, -1, seq, self.heads, self.head_dim)
        mask = self.mask.to(base.device).view(times, -1, 1, self.heads, 1)
        return torch.where(mask, replacement.to(value.dtype), value).reshape(batch, seq, -1)


class _OProjCorrection(pyvene.SourcelessIntervention):
    """Attention output: adds the masked heads' ``source @ delta^T``. Shapes ``[batch, seq, hidden]``."""

    def __init__(self, heads: int, head_dim: int) -> None:
        super().__init__(keep_last_dim=True)
        self.heads, self.head_dim = heads, head_dim
        self.source: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None
        self.delta: torch.Tensor | None = None  # [hidden, heads * head_dim]

    def forward(self, base, source=None, subspaces=None):
        if self.mask is None or self.delta is None:
            return base
        batch, seq, _ = base.shape
        value, times = _per_configuration(self.source.to(base.device), batch, self.heads, self.head_dim)
        mask = self.mask.to(base.device).view(times, -1, 1, self.heads, 1).to(value.dtype)
        masked = (value * mask).expand(times, batch // times, seq, -1, -1).reshape(batch, seq, -1)
        return base + (masked @ self.delta.to(base.device).T).to(base.dtype)


def _per_configuration(source: torch.Tensor, batch: int, heads: int, head_dim: int) -> tuple[torch.Tensor, int]:
    """``source`` ``[rows, seq or 1, heads * head_dim]`` as ``[1, rows, seq or 1, heads, head_dim]``, and how many
    times its rows repeat in a batch of ``batch`` (configuration-major): a patched forward runs several head
    configurations of the same probes, and broadcasting the probes' source over them, rather than repeating it,
    keeps one copy of every layer's source instead of one per configuration. (At the Qwen2.5-0.5B shape the scan's
    peak did not move with it: with 8 probes it stayed at 6.5 GB, and with 49 one configuration fills a forward.)"""
    rows = source.shape[0]
    if batch % rows:
        raise ValueError(f"a patch source of {rows} rows does not divide a batch of {batch}")
    return source.reshape(1, rows, source.shape[1], heads, head_dim), batch // rows


class HeadPatcher:
    """Wraps a suspect model once; ``patched`` runs it with some heads replaced.

    pyvene removes every hook on the model it wraps at each call, so read
    activations of this model with ``scanner.model.forward.capture`` only outside
    ``patched`` blocks.
    """

    def __init__(self, suspect: PreTrainedModel, sites: Sites) -> None:
        config = suspect.config
        self.layers, self.heads, self.head_dim = config.num_hidden_layers, config.num_attention_heads, config.head_dim
        self.vocab = config.vocab_size
        self._swaps = [_HeadSwap(self.heads, self.head_dim) for _ in range(self.layers)]
        self._corrections = [_OProjCorrection(self.heads, self.head_dim) for _ in range(self.layers)]
        representations = []
        for layer in range(self.layers):
            representations.append(pyvene.RepresentationConfig(
                layer=layer, component="attention_value_output", unit="pos", intervention=self._swaps[layer]))
            representations.append(pyvene.RepresentationConfig(
                layer=layer, component="attention_output", unit="pos", intervention=self._corrections[layer]))
        self._sites = sites
        self._model = pyvene.IntervenableModel(pyvene.IntervenableConfig(representations=representations), model=suspect)
        self._model.disable_model_gradients()

    def residual(self, inputs: dict[str, torch.Tensor | int]) -> ResidualCache:
        """The suspect's unpatched residual stream for ``inputs``, for ``patched`` to start forwards from."""
        return ResidualCache(self._sites, inputs)

    @contextlib.contextmanager
    def patched(self, source: PatchSource, masks: torch.Tensor, residual: ResidualCache | None = None) -> Iterator[callable]:
        """Within the block, the yielded ``run(inputs) -> logits [batch, kept, vocab]`` (float32) patches the masked
        heads; ``inputs`` are the forward's keyword arguments (``Batch.model_inputs()``, or ``TargetBatch.inputs()``,
        which applies the output head only where the target is read).

        ``masks``: ``[batch, layer, head]`` bool, one row per batch row. ``residual``: the unpatched residual
        stream of the inputs' rows (or of a batch they repeat, configuration-major); given one, the forward
        starts at the first layer any row patches, since nothing upstream of it changes.
        """
        try:
            for layer in range(self.layers):
                mask = masks[:, layer, :]
                active = mask if bool(mask.any()) else None
                self._swaps[layer].source, self._swaps[layer].mask = source.values[layer], active
                correction = self._corrections[layer]
                correction.source, correction.mask = source.values[layer], active
                correction.delta = None if source.o_proj_delta is None else source.o_proj_delta[layer]
            patched_layers = masks.flatten(2).any(-1).any(0).nonzero()
            start = int(patched_layers[0]) if residual is not None and residual.usable and len(patched_layers) else 0
            yield lambda inputs: self._run(inputs, residual if start else None, start)
        finally:
            for intervention in (*self._swaps, *self._corrections):
                intervention.source = intervention.mask = None
            for correction in self._corrections:
                correction.delta = None

    @torch.no_grad()
    def _run(self, inputs: dict[str, torch.Tensor | int], residual: ResidualCache | None, start: int) -> torch.Tensor:
        if residual is None:
            _, output = self._model(base=inputs)
            return output.logits.float()
        rows = int(inputs["input_ids"].shape[0])
        if rows % residual.rows:
            raise ValueError(f"{rows} rows do not repeat the residual's {residual.rows}")
        entering = residual.entering(start).repeat(rows // residual.rows, 1, 1)  # [rows, seq, hidden]
        from_layer = {k: v for k, v in inputs.items() if k != "input_ids"}
        with self._sites.running_layers(start):
            _, output = self._model(base={**from_layer, "inputs_embeds": entering})
        return output.logits.float()


def masks_for(configurations: Sequence[Sequence[tuple[int, int]]], layers: int, heads: int, rows: int) -> torch.Tensor:
    """``[configs * rows, layer, head]`` masks: each configuration's heads, repeated for its ``rows`` probes."""
    masks = torch.zeros((len(configurations), layers, heads), dtype=torch.bool)
    for index, configuration in enumerate(configurations):
        for layer, head in configuration:
            masks[index, layer, head] = True
    return masks.repeat_interleave(rows, dim=0)
