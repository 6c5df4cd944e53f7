"""Mix Transformer (MiT) encoder of SegFormer, with prunable attention heads and Mix-FFN channels.

Module names follow the SegFormer/mmseg checkpoints with the four stages grouped:
``stages.{i}.patch_embed.{proj,norm}``, ``stages.{i}.blocks.{j}.{norm1,attn.{q,kv,sr,norm,proj},norm2,
mlp.{fc1,dwconv,fc2}}``, ``stages.{i}.norm`` (``pretrained.py`` maps the original key styles).

Pruning additions (both init to 1, so an unpruned model computes exactly what SegFormer computes):
* ``attn.head_gate`` (Gate, (heads,)) multiplies each head's attention output before ``proj``. Head h owns
  rows [h*d, (h+1)*d) of ``q`` and of both halves of ``kv`` (k rows, then v rows at offset heads*d) and
  the same columns of ``proj``. Pruned heads keep the scale 1/sqrt(head_dim) of the others.
* ``mlp.hidden_gate`` (Gate, (hidden,)) multiplies the Mix-FFN hidden channels after fc1 -> 3x3
  depthwise conv -> GELU, i.e. right before ``fc2``.
Widths keys: ``stages.{i}.blocks.{j}.attn.head_gate`` (kept heads) and ``....mlp.hidden_gate``.

Residual streams (``stream_groups``, declared only with ``prunable_units(residual=True)``): stage i's
token stream of width ``dims[i]`` is ONE coupled group (``CoupledGroup``, kind "residual", widths key
``stages.{i}.residual``). Channel c is exactly 0 everywhere in the masked model because every WRITER of
the stream outputs 0 in c: the patch-embed conv (filter and bias c), the patch-embed LayerNorm (γ_c = β_c
= 0), every block's ``attn.proj`` and ``mlp.fc2`` (row and bias c); every READER LayerNorm (``norm1``,
``norm2``, the stage ``norm``) has γ_c = β_c = 0 too, so the columns c of its readers (``q``; ``kv``
without spatial reduction, else the ``sr`` conv -- ``attn.norm`` normalises the sr OUTPUT, which keeps
the dense width; ``fc1``; the next stage's patch-embed conv; the decoder's ``linear_c[i]``) read 0 and
are sliced away. The LayerNorms over a stream (:class:`StreamLayerNorm`) keep the statistics of the
dense width C0 after compaction (``norm_count`` = C0: the removed channels were exactly 0), so the
compacted model equals the masked one. ``norm_count`` is implied by the architecture (always the dense
stage width), so a ``widths`` dict rebuilds it and a dense model computes plain ``F.layer_norm``.
Importance of a stream channel: the mean |γ| over the stream's LayerNorms (patch-embed norm, every
norm1/norm2, the stage norm); it is observed for sensitivity at the stage output.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from npdg.models.units import CoupledGroup, Gate, TensorSlice, UnitGroup, input_channels, sub_widths

STYLE_POINTS = ("stage", "embed")  # where a MiT's style layer sits: stage 1's output | its patch embedding

class StreamLayerNorm(nn.LayerNorm):
    """LayerNorm over a (possibly pruned) residual stream: statistics over ``norm_count`` >= width channels.

    ``norm_count`` = the dense stream width C0. The channels a pruned stream lost were exactly 0, so
    μ = Σx / C0 and var = (Σ(x - μ)² + (C0 - C)·μ²) / C0 (the removed zeros each add (0 - μ)²) are the
    dense model's statistics. When ``norm_count`` equals the width (every unpruned model) the forward is
    plain ``F.layer_norm``, bit-identical to ``nn.LayerNorm``; the state dict is that of nn.LayerNorm.
    """

    def __init__(self, dim: int, norm_count: int | None = None, eps: float = 1e-5):
        super().__init__(dim, eps=eps)
        self.norm_count = int(norm_count if norm_count is not None else dim)
        if self.norm_count < dim:
            raise ValueError(f"norm_count {self.norm_count} < width {dim}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        width = self.normalized_shape[0]
        if self.norm_count == width:
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # statistics in >= fp32, as F.layer_norm
        count = float(self.norm_count)
        mean = xf.sum(-1, keepdim=True) / count
        centred = xf - mean
        var = (centred.square().sum(-1, keepdim=True) + (count - width) * mean.square()) / count
        y = centred * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight.to(y.dtype) + self.bias.to(y.dtype)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, norm_count={self.norm_count}"


class OverlapPatchEmbed(nn.Module):
    def __init__(self, cin, dim, patch, stride, width=None):
        super().__init__()
        width = width or dim
        self.proj = nn.Conv2d(cin, width, patch, stride, patch // 2)
        self.norm = StreamLayerNorm(width, dim)

    def forward(self, x):
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class EfficientAttention(nn.Module):
    """Multi-head attention whose keys/values come from a sequence spatially reduced by ``sr_ratio``."""

    def __init__(self, dim, num_heads, sr_ratio, kept_heads=None, width=None):
        super().__init__()
        width = width or dim  # the (possibly pruned) stream width; dim = the dense one
        self.head_dim = dim // num_heads
        self.num_heads = kept_heads if kept_heads is not None else num_heads
        inner = self.num_heads * self.head_dim
        self.scale = self.head_dim**-0.5
        self.q = nn.Linear(width, inner)
        self.kv = nn.Linear(dim if sr_ratio > 1 else width, 2 * inner)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:  # the reduced sequence keeps the dense width: only sr's input reads the stream
            self.sr = nn.Conv2d(width, dim, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dim)
        self.head_gate = Gate(self.num_heads)
        self.proj = nn.Linear(inner, width)

    def forward(self, x, h, w):
        n, length, dim = x.shape
        heads, d = self.num_heads, self.head_dim
        q = self.q(x).view(n, length, heads, d).transpose(1, 2)
        if self.sr_ratio > 1:
            grid = x.transpose(1, 2).reshape(n, dim, h, w)
            r = self.sr_ratio
            if h < r or w < r:  # tiny inputs only: pad so the reduction conv has one full window
                grid = F.pad(grid, (0, max(0, r - w), 0, max(0, r - h)))
            x = self.norm(self.sr(grid).flatten(2).transpose(1, 2))
        k, v = self.kv(x).view(n, -1, 2, heads, d).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # (n, heads, length, d)
        out = self.head_gate(out)
        return self.proj(out.transpose(1, 2).reshape(n, length, heads * d))

    def unit_group(self, norm1: nn.LayerNorm | None = None) -> UnitGroup:
        """``norm1``: the block's LayerNorm feeding ``q`` (and ``kv`` unless the reduction path's ``norm``
        does), folded into the importance of the q/k/v rows (``TensorSlice.input_norm``)."""
        d, inner = self.head_dim, self.num_heads * self.head_dim
        kv_norm = self.norm if self.sr_ratio > 1 else norm1
        producers = [TensorSlice(self.head_gate, "weight", 0)]
        for attr in ("weight", "bias"):
            producers += [
                TensorSlice(self.q, attr, 0, 0, d, input_norm=norm1),
                TensorSlice(self.kv, attr, 0, 0, d, input_norm=kv_norm),  # k rows
                TensorSlice(self.kv, attr, 0, inner, d, input_norm=kv_norm),  # v rows
            ]
        return UnitGroup("head", self.head_gate, producers, [TensorSlice(self.proj, "weight", 1, 0, d)])


class MixFFN(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.hidden_gate = Gate(hidden)
        self.fc2 = nn.Linear(hidden, dim)  # dim: the (possibly pruned) stream width

    def forward(self, x, h, w):
        n, length, _ = x.shape
        hidden = self.fc1(x).transpose(1, 2).reshape(n, -1, h, w)
        hidden = self.hidden_gate(self.act(self.dwconv(hidden)))  # (n, hidden, h, w)
        return self.fc2(hidden.flatten(2).transpose(1, 2))

    def unit_group(self, norm2: nn.LayerNorm | None = None) -> UnitGroup:
        """``norm2``: the block's LayerNorm feeding ``fc1``, folded into the importance of the fc1 rows."""
        producers = [TensorSlice(self.fc1, a, 0, input_norm=norm2) for a in ("weight", "bias")]
        producers += [TensorSlice(self.dwconv, a, 0) for a in ("weight", "bias")]
        producers.append(TensorSlice(self.hidden_gate, "weight", 0))
        return UnitGroup("hidden", self.hidden_gate, producers, [TensorSlice(self.fc2, "weight", 1)])


class DropPath(nn.Module):
    """Stochastic depth: drop a sample's whole residual branch with probability p while training."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class MiTBlock(nn.Module):
    def __init__(self, dim, num_heads, sr_ratio, mlp_ratio, drop_path, widths, width=None):
        super().__init__()
        width = width or dim  # the (possibly pruned) stream width; dim = the dense one
        self.norm1 = StreamLayerNorm(width, dim)
        self.attn = EfficientAttention(dim, num_heads, sr_ratio, widths.get("attn.head_gate"), width)
        self.drop_path = DropPath(drop_path)
        self.norm2 = StreamLayerNorm(width, dim)
        self.mlp = MixFFN(width, widths.get("mlp.hidden_gate", dim * mlp_ratio))

    def stream_slices(self) -> tuple[list[TensorSlice], list[TensorSlice]]:
        """(writer / LayerNorm rows, reader columns) of the block on its stage's stream."""
        rows = [TensorSlice(m, a, 0) for m in (self.norm1, self.attn.proj, self.norm2, self.mlp.fc2)
                for a in ("weight", "bias")]
        reduce = self.attn.sr if self.attn.sr_ratio > 1 else self.attn.kv
        cols = [input_channels(self.attn.q), input_channels(reduce), input_channels(self.mlp.fc1)]
        return rows, cols

    def forward(self, x, h, w):
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


class MiTStage(nn.Module):
    """Patch embedding + transformer blocks + LayerNorm; (N, C_in, H, W) -> (N, C, H/s, W/s)."""

    def __init__(self, cin, dim, patch, stride, depth, num_heads, sr_ratio, mlp_ratio, drop_paths, widths,
                 embed_tap=False):
        super().__init__()
        self.dim = dim  # dense stream width
        self.width = widths.get("residual", dim)  # kept stream width
        self.patch_embed = OverlapPatchEmbed(cin, dim, patch, stride, self.width)
        # embed_tap: an identity on the patch embedding's tokens viewed as (N, C, H, W), a hook point before the
        # blocks (``MixVisionTransformer(style_point="embed")``); None: no tap, the forward as ever
        self.embed_tap = nn.Identity() if embed_tap else None
        self.blocks = nn.ModuleList(
            MiTBlock(dim, num_heads, sr_ratio, mlp_ratio, drop_paths[j], sub_widths(widths, f"blocks.{j}"),
                     self.width)
            for j in range(depth)
        )
        self.norm = StreamLayerNorm(self.width, dim)

    def forward(self, x):
        x, h, w = self.patch_embed(x)
        if self.embed_tap is not None:  # tokens (N, L, C) as a strided (N, C, H, W) view; a hook may replace it
            x = self.embed_tap(x.transpose(1, 2).reshape(x.shape[0], -1, h, w)).flatten(2).transpose(1, 2)
        for blk in self.blocks:
            x = blk(x, h, w)
        return self.norm(x).transpose(1, 2).reshape(x.shape[0], -1, h, w)


class MixVisionTransformer(nn.Module):
    def __init__(
        self,
        dims,
        depths,
        num_heads=(1, 2, 5, 8),
        sr_ratios=(8, 4, 2, 1),
        mlp_ratio=4,
        drop_path_rate=0.1,
        widths=None,
        style_point="stage",
    ):
        super().__init__()
        if style_point not in STYLE_POINTS:
            raise ValueError(f"style_point={style_point!r}: expected one of {', '.join(STYLE_POINTS)}")
        self.style_point = style_point
        drop_paths = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        stages, cin, start = [], 3, 0
        for i, (dim, depth) in enumerate(zip(dims, depths, strict=True)):
            patch, stride = (7, 4) if i == 0 else (3, 2)
            stages.append(
                MiTStage(
                    cin,
                    dim,
                    patch,
                    stride,
                    depth,
                    num_heads[i],
                    sr_ratios[i],
                    mlp_ratio,
                    drop_paths[start : start + depth],
                    sub_widths(widths, f"stages.{i}"),
                    embed_tap=(i == 0 and style_point == "embed"),
                )
            )
            start += depth
            cin = stages[-1].width
        self.stages = nn.ModuleList(stages)
        self.dims = list(dims)  # dense stage widths
        self.apply(_init_weights)

    @property
    def out_channels(self) -> list[int]:
        """The (possibly pruned) width of each stage's output."""
        return [s.width for s in self.stages]

    @property
    def style_layer(self) -> nn.Module:
        """Stage 1's output (``style_point="stage"``) or its patch embedding's, before its blocks ("embed")."""
        return self.stages[0].embed_tap if self.style_point == "embed" else self.stages[0]

    @property
    def deep_style_layers(self) -> list[nn.Module]:
        """The stage outputs after the style point but the last: stages 1-3 ("embed") or 2-3 ("stage")."""
        return list(self.stages[:-1]) if self.style_point == "embed" else list(self.stages[1:-1])

    def forward(self, x):
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def unit_groups(self) -> list[UnitGroup]:
        blocks = [b for s in self.stages for b in s.blocks]
        return [g for b in blocks for g in (b.attn.unit_group(b.norm1), b.mlp.unit_group(b.norm2))]

    def stream_groups(self, out_consumers=None) -> list[CoupledGroup]:
        """One coupled group per stage stream (module docstring); ``out_consumers[i]``: the slices outside
        the backbone that read stage i's output (the decoder's input columns)."""
        groups = []
        for i, stage in enumerate(self.stages):
            pe = stage.patch_embed
            rows = [TensorSlice(m, a, 0) for m in (pe.proj, pe.norm) for a in ("weight", "bias")]
            cols = []
            for blk in stage.blocks:
                r, c = blk.stream_slices()
                rows, cols = rows + r, cols + c
            rows += [TensorSlice(stage.norm, a, 0) for a in ("weight", "bias")]
            if i + 1 < len(self.stages):
                cols.append(input_channels(self.stages[i + 1].patch_embed.proj))
            cols += list(out_consumers[i]) if out_consumers is not None else []
            norms = [pe.norm] + [b.norm1 for b in stage.blocks] + [b.norm2 for b in stage.blocks] + [stage.norm]
            groups.append(CoupledGroup("residual", pe.norm, rows, cols, scale_modules=norms, anchor=stage,
                                       label="residual", full_size=stage.dim, observed_at=stage,
                                       zero_producers=True))
        return groups


def _init_weights(m):
    # SegFormer's initialization: linears N(0, 0.02) "truncated" at +-2 = 100 std, i.e. a plain normal
    # (nn.init.trunc_normal_ is several times slower: seconds for B5), fan-out normal convs.
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        nn.init.zeros_(m.bias)
