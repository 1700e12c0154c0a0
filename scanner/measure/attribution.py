"""Direct logit attribution to the first target token.

At the last prompt position of each triggered probe, each head's output
``z_h @ W_O[:, h]^T`` and each MLP's output is passed through the final norm
(its scale frozen at the value the full residual stream gives, the usual
linearisation) and dotted with the target token's unembedding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from scanner.findings import AttributionFindings
from scanner.inputs.rendering import RenderedProbe
from scanner.model.forward import capture, encode_ids
from scanner.model.sites import Sites, dense_weight, input_device, module_tensor


@torch.no_grad()
def measure_attribution(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, sites: Sites, triggered: Sequence[RenderedProbe],
    target_token: int, pad: int, batch_size: int,
) -> AttributionFindings:
    config = model.config
    layers, heads, head_dim = config.num_hidden_layers, config.num_attention_heads, config.head_dim
    device = input_device(model)
    norm = sites.final_norm()
    direction = module_tensor(sites.unembedding())[target_token].float().to(device)  # [hidden]
    head_sum = torch.zeros(layers, heads)
    mlp_sum = torch.zeros(layers)
    for start in range(0, len(triggered), batch_size):
        batch = encode_ids([p.ids for p in triggered[start:start + batch_size]], pad, device)
        modules = {f"z{i}": sites.o_proj(i) for i in range(layers)}
        modules["final"] = norm
        with capture(modules, inputs=True, device=device) as inputs, \
                capture({str(i): sites.mlp(i) for i in range(layers)}, inputs=False, device=device) as outputs:
            model(**batch.model_inputs(), logits_to_keep=1)  # only the captured activations are read
        last = batch.width - 1  # left padding: every row's last prompt token is the last column
        residual = inputs["final"][:, last].float()  # [batch, hidden]
        scale = sites.final_norm_scale(residual)  # [batch, hidden]
        for layer in range(layers):
            z = inputs[f"z{layer}"][:, last].float().view(-1, heads, head_dim)  # [batch, head, head_dim]
            w_o = dense_weight(sites.o_proj(layer)).float().to(device).view(-1, heads, head_dim)  # [hidden, head, head_dim]
            contribution = torch.einsum("bhd,mhd->bhm", z, w_o)  # [batch, head, hidden]
            head_sum[layer] += ((contribution * scale[:, None, :]) @ direction).sum(0).cpu()
            mlp_out = outputs[str(layer)][:, last].float()
            mlp_sum[layer] += ((mlp_out * scale) @ direction).sum().cpu()
    count = len(triggered)
    head_mean = head_sum / count
    return AttributionFindings(
        target_token=tokenizer.convert_tokens_to_string([tokenizer.convert_ids_to_tokens(target_token)]),
        heads=tuple(tuple(float(x) for x in row) for row in head_mean.tolist()),
        attention_layers=tuple(float(x) for x in head_mean.sum(-1).tolist()),
        mlp_layers=tuple(float(x) for x in (mlp_sum / count).tolist()),
    )
