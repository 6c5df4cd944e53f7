"""Image-level DSP: an AdaIN style-transfer generator with a D-VAE on the encoder's bottleneck style.

    gen = StyleGenerator(width=8, seed=0)                     # or encoder_weights="vgg19.pth" (ImageNet)
    total, parts = gen.loss(content, style)                   # train decoder + D-VAE (encoder frozen)
    out = gen.stylize(images, mean, std)                      # decoder(adain(enc(images), mean, std))
    out = gen.perturb(images, eps)                            # new style from the D-VAE, differentiable in eps
    loss, logs = image_task_loss(gen, net, images, labels)    # adversarially restyled segmentation loss
    save_generator(gen, "runs/g"); gen = load_generator("runs/g/generator.pt")

Image space: every image in and out is what :mod:`npdg.data` returns, float (N, 3, H, W) ImageNet-
normalised. The decoder ends in a sigmoid to [0, 1] followed by the same normalisation, so a generated
image is always a valid picture (``npdg.data.transforms.denormalize`` gives [0, 1] exactly) and a
segmentation net sees its usual input range. Outputs are resized to the input size when H or W is not
a multiple of the bottleneck stride (the encoder's pools round up).

Encoder: VGG-19 (or VGG-16) ``features`` up to relu{depth}_1 (depth 4 = relu4_1, the AdaIN paper's
bottleneck; 2 or 3 keep more spatial detail for CPU budgets) with torchvision's flat indices, so a
torchvision ``vgg19/vgg16`` state dict (``features.N.weight``) loads as is; the AdaIN paper's
``vgg_normalised`` layout (pytorch-AdaIN's ``vgg_normalised.pth``: a 1x1 input conv on [0, 1] RGB,
reflection padding) is mapped onto it. ``width`` = channels of conv1_1 (64 = VGG; 8 or 16 for CPU).
Without weights the encoder is a FIXED random init drawn from ``seed`` (a random conv stack still
measures texture statistics), so a saved generator rebuilds it from the seed (checked by checksum).
Style statistics follow :mod:`npdg.reference` (per-(n, c) mean and biased std, eps 1e-5).

Training (:meth:`StyleGenerator.loss`): the AdaIN paper's content + style loss, a pixel identity term
(a project addition that anchors colours under a random encoder; ``identity_weight=0`` turns it off)
and the D-VAE loss on the content's bottleneck statistics. ``python -m npdg.dsp train`` runs it.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from npdg import ops
from npdg.data.transforms import MEAN, STD
from npdg.dsp.adversarial import ascend
from npdg.dsp.dvae import DVAE
from npdg.dsp.perturb import cross_entropy, frozen_bn_stats, num_restyled, restyled_task_loss
from npdg.reference import style_stats

FORMAT = "npdg-style-generator/1"
# Conv widths per stage (multiples of conv1_1's width); stages are separated by 2x2 max-pools.
STAGES = {"vgg19": ((1, 1), (2, 2), (4, 4, 4, 4), (8,)), "vgg16": ((1, 1), (2, 2), (4, 4, 4), (8,))}
VGG_NORMALISED_CONVS = (2, 5, 9, 12, 16, 19, 22, 25, 29)  # conv indices in pytorch-AdaIN's vgg_normalised
CHECKSUM_RTOL = 1e-5  # a seeded encoder rebuilt on another torch build must match the saved one this well


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    return images * images.new_tensor(STD).view(3, 1, 1) + images.new_tensor(MEAN).view(3, 1, 1)


def _from_unit(images: torch.Tensor) -> torch.Tensor:
    return (images - images.new_tensor(MEAN).view(3, 1, 1)) / images.new_tensor(STD).view(3, 1, 1)


# --- encoder


def _load_state(path: Path) -> dict:
    from npdg.checkpoint import load

    sd = load(path, "encoder weights")  # weights_only; CheckpointError names the file
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"encoder weights {path}: expected a dict of tensors (a VGG state dict)")
    return sd


def vgg_plan(arch: str, depth: int = 4) -> tuple:
    """Flat plan up to relu{depth}_1 (the bottleneck), e.g. vgg19 depth 3: (1, 1, "M", 2, 2, "M", 4)."""
    if arch not in STAGES:
        raise ValueError(f"unknown encoder arch {arch!r}; valid: {', '.join(STAGES)}")
    if not 2 <= depth <= 4:
        raise ValueError(f"encoder depth must be 2..4 (bottleneck relu2_1..relu4_1), got {depth}")
    plan = [v for stage in STAGES[arch][:depth - 1] for v in (*stage, "M")]
    return (*plan, STAGES[arch][depth - 1][0])


def infer_vgg_layout(sd: dict, path) -> tuple[str, int, str]:
    """(arch, width, layout) of a VGG state dict: torchvision ``features.N`` keys or ``vgg_normalised``."""
    first = sd.get("0.weight")
    if first is not None and tuple(first.shape) == (3, 3, 1, 1) and "2.weight" in sd:
        return "vgg19", int(sd["2.weight"].shape[0]), "vgg_normalised"
    if "features.0.weight" not in sd:
        some = ", ".join(list(sd)[:3]) or "none"
        raise ValueError(f"encoder weights {path}: no VGG key 'features.0.weight' (nor vgg_normalised '0.weight'); "
                         f"keys start with {some}")
    # index 16 is conv3_4 in VGG-19 and a max-pool (no weight) in VGG-16
    arch = "vgg19" if "features.16.weight" in sd else "vgg16"
    return arch, int(sd["features.0.weight"].shape[0]), "torchvision"


class Encoder(nn.Module):
    """Frozen VGG-like encoder. ``forward(images) -> [relu1_1, ..., relu{depth}_1]`` (the last is the
    bottleneck: stride 2**(depth-1), width * (1, 2, 4, 8)[depth-1] channels); inputs are ImageNet-normalised.
    A shallower ``depth`` keeps more spatial detail in the bottleneck (easier to decode on a CPU budget)."""

    def __init__(self, arch: str = "vgg19", width: int = 64, seed: int = 0, weights: str | None = None,
                 depth: int = 4):
        super().__init__()
        plan = vgg_plan(arch, depth)
        if width < 1:
            raise ValueError(f"encoder width must be >= 1, got {width}")
        self.arch, self.width, self.seed, self.depth, self.layout = arch, width, seed, depth, "random"
        layers, self.taps, cin, pooled = [], [], 3, True
        for v in plan:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
                pooled = True
                continue
            layers += [nn.Conv2d(cin, v * width, 3, padding=1), nn.ReLU()]
            if pooled:  # relu_k_1: the first ReLU of every stage is a style layer
                self.taps.append(len(layers) - 1)
            cin, pooled = v * width, False
        self.features = nn.Sequential(*layers)
        self.pre: nn.Conv2d | None = None  # vgg_normalised's 1x1 input conv (on [0, 1] RGB)
        self.channels = [layers[i - 1].out_channels for i in self.taps]
        if weights is None:
            gen = torch.Generator().manual_seed(seed)
            for m in self.features:
                if isinstance(m, nn.Conv2d):  # He init keeps activations O(1) through the random stack
                    fan_in = m.in_channels * 9
                    nn.init.zeros_(m.bias)
                    with torch.no_grad():
                        m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * math.sqrt(2.0 / fan_in))
        else:
            self._load_weights(weights)
        self.requires_grad_(False)
        self.eval()

    def _load_weights(self, path) -> None:
        path = Path(path)
        sd = _load_state(path)
        arch, width, layout = infer_vgg_layout(sd, path)
        convs = [i for i, m in enumerate(self.features) if isinstance(m, nn.Conv2d)]
        if layout == "vgg_normalised":
            mapped = {f"features.{c}.{p}": sd.get(f"{v}.{p}") for c, v in zip(convs, VGG_NORMALISED_CONVS, strict=False)
                      for p in ("weight", "bias")}
            self.pre = nn.Conv2d(3, 3, 1)
            expected = {f"pre.{p}": t for p, t in self.pre.state_dict().items()}
            mapped.update({"pre.weight": sd["0.weight"], "pre.bias": sd.get("0.bias")})
            for m in self.features:  # the AdaIN-paper VGG was trained with reflection padding
                if isinstance(m, nn.Conv2d):
                    m.padding_mode = "reflect"
        else:
            mapped = {f"features.{c}.{p}": sd.get(f"features.{c}.{p}") for c in convs for p in ("weight", "bias")}
            expected = {}
        expected.update({f"features.{k}": v for k, v in self.features.state_dict().items()})
        for key, want in expected.items():
            got = mapped.get(key)
            if got is None:
                raise ValueError(f"encoder weights {path}: missing key for {key} ({layout} {arch}, "
                                 f"encoder is {self.arch} width {self.width})")
            if tuple(got.shape) != tuple(want.shape):
                raise ValueError(f"encoder weights {path}: {key} has shape {tuple(got.shape)}, the {self.arch} "
                                 f"width-{self.width} encoder expects {tuple(want.shape)} "
                                 f"(the file looks like {arch} width {width})")
        self.load_state_dict({k: mapped[k].float() for k in expected}, strict=True)
        self.layout = layout

    def train(self, mode: bool = True):
        return super().train(False)  # frozen: always in eval mode

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = images if self.pre is None else self.pre(_to_unit(images))
        feats = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                feats.append(x)
        return feats

    def checksum(self) -> float:
        return float(sum(p.detach().double().abs().sum() for p in self.parameters()))


# --- decoder


class Decoder(nn.Module):
    """Trainable mirror of the encoder (the AdaIN paper's decoder): 3x3 convs with reflection padding and
    ReLU, nearest 2x upsampling where the encoder pools, ending in 3 RGB logits (no activation; the
    generator applies sigmoid + normalisation)."""

    def __init__(self, arch: str = "vgg19", width: int = 64, depth: int = 4):
        super().__init__()
        stages, cur = [], []
        for v in vgg_plan(arch, depth):  # encoder stages, e.g. [[w, w], [2w, 2w], ...]
            if v == "M":
                stages.append(cur)
                cur = []
            else:
                cur.append(v * width)
        cin = cur[-1]  # bottleneck channels
        mirrored = list(reversed(stages))  # vgg19: 8w -> 4w, up, 4w x3 -> 2w, up, 2w -> w, up, w -> 3
        layers = [nn.Conv2d(cin, mirrored[0][-1], 3, padding=1, padding_mode="reflect"), nn.ReLU()]
        cin = mirrored[0][-1]
        for i, stage in enumerate(mirrored):
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            for _ in range(len(stage) - 1):
                layers += [nn.Conv2d(cin, cin, 3, padding=1, padding_mode="reflect"), nn.ReLU()]
            last = i + 1 == len(mirrored)
            cout = 3 if last else mirrored[i + 1][-1]
            layers.append(nn.Conv2d(cin, cout, 3, padding=1, padding_mode="reflect"))
            if not last:
                layers.append(nn.ReLU())
            cin = cout
        self.body = nn.Sequential(*layers)
        for m in self.body:  # He init: PyTorch's default shrinks activations through ~9 convs, slowing the start
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


# --- generator


class StyleGenerator(nn.Module):
    """Frozen encoder + trainable decoder + ``dvae = DVAE(bottleneck channels)``; see the module docstring.

    ``style_weight`` and ``beta`` weigh the style loss and the D-VAE KL in :meth:`loss`. ``arch`` / ``width``
    default to the weights file's layout when ``encoder_weights`` is given, else to VGG-19 width 64;
    ``depth`` 4 = the AdaIN paper's relu4_1 bottleneck, 3 / 2 = relu3_1 / relu2_1 (CPU presets).
    """

    def __init__(self, arch: str | None = None, width: int | None = None, seed: int = 0,
                 encoder_weights: str | None = None, depth: int = 4, latent: int = 32, hidden: int = 256,
                 style_weight: float = 10.0, beta: float = 1e-3, identity_weight: float = 1.0):
        super().__init__()
        if min(beta, style_weight, identity_weight) < 0:
            raise ValueError(f"beta, style_weight and identity_weight must be >= 0, "
                             f"got {beta}, {style_weight}, {identity_weight}")
        if encoder_weights is not None and (arch is None or width is None):
            path = Path(encoder_weights)
            file_arch, file_width, _ = infer_vgg_layout(_load_state(path), path)
            arch, width = arch or file_arch, width or file_width
        arch, width = arch or "vgg19", width or 64
        self.encoder = Encoder(arch, width, seed, encoder_weights, depth)
        self.decoder = Decoder(arch, width, depth)
        self.dvae = DVAE(self.encoder.channels[-1], latent=latent, hidden=hidden)
        self.style_weight, self.beta = float(style_weight), float(beta)
        self.identity_weight = float(identity_weight)
        self.config = {"arch": arch, "width": width, "seed": seed, "depth": depth, "latent": latent, "hidden": hidden,
                       "style_weight": self.style_weight, "beta": self.beta, "identity_weight": self.identity_weight,
                       "encoder_weights": str(Path(encoder_weights).resolve()) if encoder_weights else None}

    def decode(self, feat: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Bottleneck feature -> normalised image of ``size`` (sigmoid to [0, 1], then ImageNet-normalised)."""
        rgb = self.decoder(feat)
        if tuple(rgb.shape[-2:]) != tuple(size):
            rgb = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False)
        return _from_unit(torch.sigmoid(rgb))

    def bottleneck(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)[-1]

    def stylize(self, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """decoder(adain(enc(images), mean, std)); mean/std (N, C) in the bottleneck's statistics."""
        return self.decode(ops.adain(self.bottleneck(images), mean, std), images.shape[-2:])

    def restyle(self, feat: torch.Tensor, size, eps: torch.Tensor | None = None, scale: float = 1.0):
        """:meth:`perturb` from a precomputed bottleneck ``feat`` (the encoder is frozen, so an adversarial
        search encodes once)."""
        mean, std = style_stats(feat)
        new_mean, new_std = self.dvae.generate(mean, std, eps, scale)
        return self.decode(ops.adain(feat, new_mean, new_std), size)

    def perturb(self, images: torch.Tensor, eps: torch.Tensor | None = None, scale: float = 1.0) -> torch.Tensor:
        """Images in a new style: the D-VAE encodes their bottleneck style, decodes z = mu_z + scale * eps *
        sigma_z (eps (N, latent), ~N(0, I) when None), AdaIN + decoder render it; differentiable in eps."""
        return self.restyle(self.bottleneck(images), images.shape[-2:], eps, scale)

    def loss(self, content: torch.Tensor, style: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """(total, parts) with parts = content, style, identity, dvae_recon, dvae_kl (detached).

        content: MSE between the bottleneck of the output and the AdaIN target adain(enc(content), style
        stats of enc(style)) (AdaIN paper); style: MSE of per-channel means and stds between output and
        style over the encoder's style layers (relu1_1, relu2_1, ...); identity: pixel MSE of
        decode(enc(content)) vs content — AdaIN with the content's own style is the identity, and this
        anchors colours that a random encoder's features constrain only loosely (a project addition;
        ``identity_weight=0`` gives the paper's loss); D-VAE: reconstruction + beta * KL of the content's
        bottleneck stats. total = content + style_weight * style + identity_weight * identity + D-VAE.
        """
        with torch.no_grad():
            c_feats, s_feats = self.encoder(content), self.encoder(style)
            target = ops.adain(c_feats[-1], *style_stats(s_feats[-1]))
        size, n = content.shape[-2:], content.shape[0]
        if self.identity_weight:  # one decoder pass for both
            out, ident = self.decode(torch.cat([target, c_feats[-1]]), size).split(n)
            identity = F.mse_loss(ident, content)
        else:
            out, identity = self.decode(target, size), content.new_zeros(())
        o_feats = self.encoder(out)
        content_loss = F.mse_loss(o_feats[-1], target)
        style_loss = sum(F.mse_loss(om, sm) + F.mse_loss(osd, ssd)
                         for (om, osd), (sm, ssd) in ((style_stats(o), style_stats(s))
                                                      for o, s in zip(o_feats, s_feats, strict=True)))
        dvae_loss, dvae_parts = self.dvae.loss(*style_stats(c_feats[-1]), beta=self.beta)
        total = content_loss + self.style_weight * style_loss + self.identity_weight * identity + dvae_loss
        parts = {"content": content_loss.detach(), "style": style_loss.detach(), "identity": identity.detach(),
                 "dvae_recon": dvae_parts["recon"], "dvae_kl": dvae_parts["kl"]}
        return total, parts

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()
        return self


# --- save / load


def save_generator(gen: StyleGenerator, path) -> Path:
    """Write ``gen`` as plain data + tensors (config, decoder and D-VAE state dicts, encoder checksum);
    a directory gets ``generator.pt`` inside. Returns the file written."""
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / "generator.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    from npdg import __version__
    from npdg.checkpoint import save

    save({"format": FORMAT, "version": __version__, "config": dict(gen.config),
          "encoder_checksum": gen.encoder.checksum(),
          "decoder": {k: v.detach().cpu() for k, v in gen.decoder.state_dict().items()},
          "dvae": {k: v.detach().cpu() for k, v in gen.dvae.state_dict().items()}}, path)
    return path


def resolve_checkpoint(path) -> Path:
    """A generator file, or a directory holding ``generator.pt``; FileNotFoundError if neither exists."""
    path = Path(path)
    if path.is_dir():
        path = path / "generator.pt"
    if not path.is_file():
        raise FileNotFoundError(f"generator checkpoint {path} does not exist (expected a run directory with "
                                "generator.pt, or the file)")
    return path


def load_generator(path, encoder_weights: str | None = None, map_location="cpu") -> StyleGenerator:
    """Rebuild a generator written by :func:`save_generator` (``weights_only=True``). The encoder comes back
    from its seed, or from the recorded weights file (``encoder_weights`` overrides a moved file); a
    checksum mismatch raises ValueError rather than pairing the decoder with the wrong encoder."""
    path = resolve_checkpoint(path)
    from npdg.checkpoint import check_format, load

    payload = load(path, "generator")
    check_format(payload, FORMAT, str(path))
    cfg = dict(payload["config"])
    recorded = cfg.pop("encoder_weights")
    weights = encoder_weights or recorded
    gen = StyleGenerator(encoder_weights=weights, **cfg)
    got, want = gen.encoder.checksum(), payload["encoder_checksum"]
    if not math.isclose(got, want, rel_tol=CHECKSUM_RTOL):
        raise ValueError(f"{path}: the rebuilt encoder differs from the one the decoder was trained with "
                         f"(checksum {got:.6g} vs {want:.6g}; encoder weights {weights or 'seeded random'})")
    gen.decoder.load_state_dict(payload["decoder"])
    gen.dvae.load_state_dict(payload["dvae"])
    return gen.to(map_location)


# --- training hook for the segmentation loop


def image_task_loss(gen: StyleGenerator, net: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                    loss_fn=cross_entropy, p: float = 0.5, adv_steps: int = 1, adv_step_size: float = 1.0,
                    copy: bool = False, restyled_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Segmentation loss of a batch whose first ceil(p * N) images are restyled adversarially (``copy``:
    restyled COPIES of them go in front of the whole clean batch, N + ceil(p * N) images, instead).

    eps ~ N(0, I) is pushed by ``adv_steps`` normalised ascent steps of ``adv_step_size`` on
    ``loss_fn(net(gen.perturb(images, eps)), labels)`` for those images (gradients to eps only; BN
    running stats untouched, see ``npdg.dsp.perturb.frozen_bn_stats``; with a single restyled image one
    clean partner rides along, as BN needs >= 2 samples), then ``loss_fn`` (default cross-entropy, 255
    ignored) runs on the whole batch (``restyled_weight`` > 0: the clean images' mean + restyled_weight x the
    restyled images' mean instead of one mean over both, see FeatureDSP). The generator stays frozen: the
    restyled images are made without a graph. Returns (loss, logs) with logs = {"clean", "perturbed" (0-dim
    tensors; nan when the part is empty), "num_perturbed"}.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    n = images.shape[0]
    k = num_restyled(p, n)
    if k:
        clean = images
        size = images.shape[-2:]
        m = min(n, max(k, 2))  # >= 2 samples through BN in the ascent passes when the batch has them
        with torch.no_grad():
            feat = gen.bottleneck(images[:k])
        eps = torch.randn(k, gen.dvae.latent, device=images.device)

        def objective(e):
            with frozen_bn_stats(net):
                logits = net(torch.cat([gen.restyle(feat, size, e), images[k:m]]))
            return loss_fn(logits[:k], labels[:k])

        eps = ascend(eps, objective, adv_steps, adv_step_size)
        with torch.no_grad():
            images = torch.cat([gen.restyle(feat, size, eps), clean if copy else clean[k:]])
        if copy:
            labels, n = torch.cat([labels[:k], labels]), n + k
    logits = net(images)
    loss, split = restyled_task_loss(loss_fn, logits, labels, k, restyled_weight)
    # an unmixed batch is all restyled (k = n) or all clean (k = 0): the loss is that part
    perturbed, clean = split if split is not None else (loss.detach(), None) if k else (None, loss.detach())
    logs = {"num_perturbed": k, "perturbed": perturbed if k else float("nan"),  # (tensors: npdg.loop reads
            "clean": clean if k < n else float("nan")}                           # them with the loss, one sync)
    return loss, logs
