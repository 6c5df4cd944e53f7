"""Load an ImageNet-pretrained backbone from a LOCAL file (never downloads).

Accepted key styles (wrappers ``state_dict`` / ``model`` and prefixes ``module.`` / ``backbone.`` are
unwrapped first; classifier / decode-head keys are dropped silently, they are not backbone weights):

* ResNet, VGG-16-BN: torchvision names (``layer1.0.conv1.weight``, ``features.0.weight``).
* MiT, SegFormer / mmseg style: ``patch_embed1.proj``, ``block1.0.attn.q``, ``block1.0.attn.kv``,
  ``block1.0.mlp.dwconv.dwconv``, ``norm1``.
* MiT, Hugging Face style: ``segformer.encoder.patch_embeddings.0.proj``,
  ``block.0.0.attention.self.{query,key,value}`` (key and value are stacked into our ``kv``),
  ``attention.output.dense``, ``mlp.dense1``, ``layer_norm.0``.

Missing keys (our pruning gates excepted: they have no pretrained value and start at 1) and unexpected
keys are warned about and returned. A shape mismatch is an error: wrong variant or a pruned model.
"""

from __future__ import annotations

import re
import warnings
from typing import NamedTuple

import torch

from npdg.models.mit import MixVisionTransformer

_DROPPED_PREFIXES = ("fc.", "classifier.", "head.", "decode_head.", "auxiliary_head.")


class PretrainedError(ValueError):
    """A weights file that does not fit the model (another architecture or variant); names the file."""


class PretrainedReport(NamedTuple):
    missing: list[str]
    unexpected: list[str]


def _unwrap(obj) -> dict[str, torch.Tensor]:
    while isinstance(obj, dict):
        nested = next((obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), dict)), None)
        if nested is None:
            break
        obj = nested
    state = {}
    for key, value in obj.items():
        for prefix in ("module.", "segformer.", "backbone.", "encoder."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        if not key.startswith(_DROPPED_PREFIXES):
            state[key] = value
    return state


_SEGFORMER_RULES = [  # (pattern, replacement) applied in order
    (r"^patch_embed(\d)\.", lambda m: f"stages.{int(m[1]) - 1}.patch_embed."),
    (r"^block(\d)\.(\d+)\.", lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}."),
    (r"^norm(\d)\.", lambda m: f"stages.{int(m[1]) - 1}.norm."),
    (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
]

_HF_RULES = [
    (r"^patch_embeddings\.(\d)\.layer_norm\.", r"stages.\1.patch_embed.norm."),
    (r"^patch_embeddings\.(\d)\.", r"stages.\1.patch_embed."),
    (r"^block\.(\d)\.(\d+)\.", r"stages.\1.blocks.\2."),
    (r"^layer_norm\.(\d)\.", r"stages.\1.norm."),
    (r"\.layer_norm_1\.", ".norm1."),
    (r"\.layer_norm_2\.", ".norm2."),
    (r"\.attention\.self\.query\.", ".attn.q."),
    (r"\.attention\.self\.layer_norm\.", ".attn.norm."),
    (r"\.attention\.self\.", ".attn."),  # sr, and key/value (stacked below)
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.mlp\.dense1\.", ".mlp.fc1."),
    (r"\.mlp\.dense2\.", ".mlp.fc2."),
    (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
]


def _rename(state, rules):
    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def map_mit_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SegFormer/mmseg or Hugging Face MiT keys -> ``MixVisionTransformer`` keys."""
    if not any(k.startswith(("patch_embeddings.", "block.")) for k in state):
        return _rename(state, _SEGFORMER_RULES)
    state = _rename(state, _HF_RULES)
    for key in [k for k in state if ".attn.key." in k]:
        value_key = key.replace(".attn.key.", ".attn.value.")
        if value_key in state:  # our kv = [k rows; v rows], as in the original implementation
            state[key.replace(".attn.key.", ".attn.kv.")] = torch.cat([state.pop(key), state.pop(value_key)])
    return state


def load_pretrained_backbone(model, path) -> PretrainedReport:
    """Load ``path`` into ``model.backbone``; returns (and warns about) missing / unexpected keys."""
    from npdg.checkpoint import load

    state = _unwrap(load(path, "pretrained backbone"))
    backbone = model.backbone
    if isinstance(backbone, MixVisionTransformer):
        state = map_mit_keys(state)
    own = backbone.state_dict()
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    if mismatched:
        raise PretrainedError(
            f"{path}: pretrained shapes do not fit {type(backbone).__name__}: " + "; ".join(mismatched[:5])
        )
    matched = sum(k in own for k in state)
    if matched * 2 < len(own):  # a VGG file for a ResNet, an HF file of another family: almost nothing fits
        raise PretrainedError(f"{path}: only {matched} of the {len(own)} tensors of {type(backbone).__name__} "
                              "are in this file -- weights for another architecture?")
    result = backbone.load_state_dict(state, strict=False)
    report = PretrainedReport(
        # Gates have no pretrained value (they start at 1); old torchvision files lack BN counters.
        missing=[k for k in result.missing_keys if not k.endswith(("_gate.weight", "num_batches_tracked"))],
        unexpected=list(result.unexpected_keys),
    )
    if report.missing or report.unexpected:
        warnings.warn(
            f"pretrained {path}: {len(report.missing)} missing keys {report.missing[:5]}, "
            f"{len(report.unexpected)} unexpected keys {report.unexpected[:5]}",
            stacklevel=3,
        )
    return report
