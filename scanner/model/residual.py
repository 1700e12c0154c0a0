"""The unpatched suspect's residual stream entering a layer, so patched forwards can start there.

A head patched or ablated at layer ``L`` changes nothing upstream of ``L``: every configuration whose first
patched layer is ``L`` can run layers ``L..`` only, from the residual the clean forward had there. On a model
of ``n`` layers that saves ``L / n`` of each such forward; over every head of mean ablation, about half.
"""

from __future__ import annotations

import torch

from scanner.model.forward import capture
from scanner.model.sites import Sites, input_device


class ResidualCache:
    """The residual stream entering each layer for one batch of inputs, computed as asked, layer after layer.

    Only the last layer asked for is kept: ``[rows, seq, hidden]`` for every layer of a 36-layer model would
    hold 36 forwards' worth of activations. Asking for an earlier layer recomputes from the embeddings (patching's
    cumulative head sets reach lower layers as they grow; each recomputation costs one forward of the ``rows``).
    """

    def __init__(self, sites: Sites, inputs: dict[str, torch.Tensor | int]) -> None:
        self.sites = sites
        self.inputs = {k: v for k, v in inputs.items() if k != "logits_to_keep"}
        self.rows = int(self.inputs["input_ids"].shape[0])
        self._layer, self._residual = 0, None

    @property
    def usable(self) -> bool:
        return self.sites.can_run_layers()

    @torch.no_grad()
    def entering(self, layer: int) -> torch.Tensor:
        """``[rows, seq, hidden]``: the residual stream entering ``layer`` (layer 0: the embeddings)."""
        if layer < self._layer or self._residual is None:
            self._layer, self._residual = 0, self.sites.embedding()(self.inputs["input_ids"])
        if layer > self._layer:
            start_from = {k: v for k, v in self.inputs.items() if k != "input_ids"}
            with self.sites.running_layers(self._layer, layer), \
                    capture({"residual": self.sites.final_norm()}, inputs=True,
                            device=input_device(self.sites.model)) as captured:
                self.sites.model(inputs_embeds=self._residual, **start_from, logits_to_keep=1)
            self._layer, self._residual = layer, captured["residual"]
        return self._residual
