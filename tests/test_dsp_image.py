"""Image-level DSP: the AdaIN style generator (npdg.dsp.generator), its training hook and its CLI.

Everything runs on tiny inputs (2x3x32x32, width-4 encoders) with one intra-op thread.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from npdg.dsp.__main__ import main
from npdg.dsp.adversarial import ascend
from npdg.dsp.generator import Encoder, StyleGenerator, image_task_loss, load_generator, save_generator

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")
EPS = 1e-5  # npdg.reference.DEFAULT_EPS, restated: the tests check the convention, not reuse it
# torchvision's VGG ``features`` conv indices up to relu4_1 (from torchvision.models.vgg cfgs "E" / "D")
TV_VGG19 = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256),
            14: (256, 256), 16: (256, 256), 19: (512, 256)}
TV_VGG16 = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256),
            14: (256, 256), 17: (512, 256)}


def _stats64(x):
    """Per-(n, c) mean and biased std + eps, in float64 (the project's style convention)."""
    x = x.double().flatten(2)
    mean = x.mean(-1)
    return mean, ((x - mean[..., None]) ** 2).mean(-1).add(EPS).sqrt()


def _tiny(**kw):
    torch.manual_seed(0)
    return StyleGenerator(**{"width": 4, "depth": 2, "latent": 8, "hidden": 32, **kw})


def _images(n=2, h=32, w=32, seed=0):
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _vgg_file(path, layout, width=64, bad=None):
    """A state dict in torchvision (features.N, + a classifier key to ignore) or vgg_normalised layout."""
    g = torch.Generator().manual_seed(1)
    if layout == "vgg_normalised":
        shapes = {0: (3, 3, 1), **{i: (o, c, 3) for i, (o, c) in zip(
            (2, 5, 9, 12, 16, 19, 22, 25, 29), TV_VGG19.values(), strict=True)}}
        sd = {}
        for i, (o, c, k) in shapes.items():
            sd[f"{i}.weight"] = torch.randn(o, c, k, k, generator=g) * 0.05
            sd[f"{i}.bias"] = torch.randn(o, generator=g)
    else:
        sd = {"classifier.0.weight": torch.zeros(2, 2)}
        for i, (o, c) in (TV_VGG19 if layout == "vgg19" else TV_VGG16).items():
            o, c = o * width // 64, (c * width // 64 if c != 3 else 3)
            sd[f"features.{i}.weight"] = torch.randn(o, c, 3, 3, generator=g) * 0.05
            sd[f"features.{i}.bias"] = torch.randn(o, generator=g)
    if bad:
        sd[bad] = torch.zeros(sd[bad].shape[0] + 1, *sd[bad].shape[1:])
    torch.save(sd, path)
    return sd


# --- encoder


def test_encoder_is_frozen_and_deterministic_per_seed():
    a, b, c = Encoder(width=4, seed=3), Encoder(width=4, seed=3), Encoder(width=4, seed=4)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), name
        assert not pa.requires_grad, name
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True))
    feats = a(_images())
    assert [f.shape[1] for f in feats] == [4, 8, 16, 32]  # relu1_1 .. relu4_1
    assert feats[-1].shape[-2:] == (4, 4)  # stride 8


def test_training_steps_leave_the_encoder_untouched():
    gen = _tiny()
    before = copy.deepcopy(gen.encoder.state_dict())
    gen.train()
    assert not gen.encoder.training and gen.decoder.training
    opt = torch.optim.Adam(gen.parameters(), lr=1e-2)
    x = _images()
    for _ in range(2):
        opt.zero_grad()
        gen.loss(x, x.flip(0))[0].backward()
        opt.step()
    assert all(p.grad is None for p in gen.encoder.parameters())
    for k, v in gen.encoder.state_dict().items():
        assert torch.equal(v, before[k]), k


# --- AdaIN / loss


def test_adain_gives_exactly_the_target_stats_at_the_bottleneck():
    gen = _tiny()
    gen.encoder.double()
    gen.decoder.double()
    seen = []
    gen.decoder.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0]))
    x = _images().double()
    c = gen.encoder.channels[-1]
    g = torch.Generator().manual_seed(5)
    mean = torch.randn(2, c, generator=g, dtype=torch.float64) * 3
    std = torch.rand(2, c, generator=g, dtype=torch.float64) * 2 + 0.1
    out = gen.stylize(x, mean, std)
    assert out.shape == x.shape
    got_mean, got_std = _stats64(seen[0])
    _, feat_std = _stats64(gen.bottleneck(x))
    var = feat_std.square() - EPS  # the bottleneck's biased variance
    # AdaIN divides by sqrt(var + eps), and measuring the std adds eps once more
    torch.testing.assert_close(got_mean, mean, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got_std, (std.square() * var / (var + EPS) + EPS).sqrt(), rtol=1e-10, atol=1e-10)


def test_loss_parts_match_a_float64_reference():
    gen = _tiny(style_weight=7.0, identity_weight=0.5, beta=0.01)
    gen.encoder.double()
    gen.decoder.double()
    content, style = _images().double(), _images(seed=1).double()
    torch.manual_seed(0)
    total, parts = gen.loss(content, style)

    enc = gen.encoder
    c_feats, s_feats = enc(content), enc(style)
    cm, cs = _stats64(c_feats[-1])
    sm, ss = _stats64(s_feats[-1])
    target = ss[..., None, None] * (c_feats[-1] - cm[..., None, None]) / cs[..., None, None] + sm[..., None, None]
    out = gen.decode(target, (32, 32))
    o_feats = enc(out)
    content_ref = ((o_feats[-1] - target) ** 2).mean()
    style_ref = sum(((_stats64(o)[0] - _stats64(s)[0]) ** 2).mean() + ((_stats64(o)[1] - _stats64(s)[1]) ** 2).mean()
                    for o, s in zip(o_feats, s_feats, strict=True))
    identity_ref = ((gen.decode(c_feats[-1], (32, 32)) - content) ** 2).mean()
    for name, ref in (("content", content_ref), ("style", style_ref), ("identity", identity_ref)):
        torch.testing.assert_close(parts[name], ref, rtol=1e-9, atol=1e-12, msg=name)
    dvae = parts["dvae_recon"].double() + 0.01 * parts["dvae_kl"].double()
    torch.testing.assert_close(total, content_ref + 7.0 * style_ref + 0.5 * identity_ref + dvae, rtol=1e-6, atol=1e-6)
    assert style_ref > 1e-3 and identity_ref > 1e-3  # the terms are not vacuous on these inputs


def test_training_reduces_the_generator_loss():
    gen = _tiny()
    x, s = _images(), _images(seed=1)

    def evaluate():
        torch.manual_seed(0)  # the D-VAE term samples z
        with torch.no_grad():
            return gen.loss(x, s)

    first_total, first = evaluate()
    opt = torch.optim.Adam([p for p in gen.parameters() if p.requires_grad], lr=2e-3)
    gen.train()
    for _ in range(20):
        opt.zero_grad()
        gen.loss(x, s)[0].backward()
        opt.step()
    last_total, last = evaluate()
    assert last_total < 0.7 * first_total
    for name in ("content", "style", "identity"):
        assert last[name] < first[name], name


# --- perturbation and the adversarial search


def _style_distance(gen, images):
    own = [_stats64(f) for f in gen.encoder(images)]

    def objective(eps):
        out = gen.perturb(images, eps)
        return sum(((_stats64(f)[0] - m) ** 2).mean() + ((_stats64(f)[1] - s) ** 2).mean()
                   for f, (m, s) in zip(gen.encoder(out), own, strict=True))
    return objective


def test_perturb_is_differentiable_in_eps_and_ascent_increases_the_objective():
    gen = _tiny()
    x = _images()
    eps = torch.randn(2, gen.dvae.latent, generator=torch.Generator().manual_seed(2), requires_grad=True)
    out = gen.perturb(x, eps)
    assert out.shape == x.shape
    (grad,) = torch.autograd.grad(out.square().sum(), eps)
    assert grad.abs().sum(1).min() > 0  # every sample's eps moves its image
    objective = _style_distance(gen, x)
    pushed = ascend(eps.detach(), objective, steps=2, step_size=0.5)
    assert objective(pushed) > objective(eps.detach())


def _seg_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 1))


def test_image_task_loss_touches_bn_stats_once_and_trains_only_the_net():
    gen, net = _tiny(), _seg_net()
    x = _images(n=3)
    labels = torch.randint(0, 5, (3, 32, 32), generator=torch.Generator().manual_seed(0))
    labels[0, :4] = 255
    bn = net[1]
    loss, logs = image_task_loss(gen, net, x, labels, p=0.5, adv_steps=2, adv_step_size=1.0)
    assert logs["num_perturbed"] == 2 and math.isfinite(logs["perturbed"]) and math.isfinite(logs["clean"])
    assert int(bn.num_batches_tracked) == 1  # the two ascent passes left the running stats alone
    loss.backward()
    assert all(p.grad is None for p in gen.parameters())
    assert all(p.grad is not None for p in net.parameters())
    clean_net = _seg_net()  # p = 0: exactly the plain segmentation loss
    loss0, logs0 = image_task_loss(gen, clean_net, x, labels, p=0.0)
    ref_net = _seg_net()
    torch.testing.assert_close(loss0, F.cross_entropy(ref_net(x), labels, ignore_index=255))
    assert logs0["num_perturbed"] == 0


def test_image_task_loss_copy_keeps_the_whole_clean_batch():
    gen, x = _tiny(), _images(n=4)
    labels = torch.randint(0, 5, (4, 32, 32), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(3)
    net = _seg_net()
    seen = []
    net.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().clone()))
    loss, logs = image_task_loss(gen, net, x, labels, p=0.5, adv_steps=1, copy=True)
    batch = seen[-1]  # the training forward: 2 restyled copies in front of all 4 clean images
    assert batch.shape[0] == 6 and torch.equal(batch[2:], x) and not torch.allclose(batch[:2], x[:2])
    with torch.no_grad():  # train-mode BN: batch statistics of the same 6 images, so the same logits
        logits = net(batch)
    full = torch.cat([labels[:2], labels])
    torch.testing.assert_close(loss.detach(), F.cross_entropy(logits, full, ignore_index=255))
    assert logs["num_perturbed"] == 2
    torch.testing.assert_close(torch.tensor(logs["clean"]), F.cross_entropy(logits[2:], labels, ignore_index=255))
    torch.manual_seed(3)  # the same draws again, the loss now clean mean + 0.5 x restyled mean
    weighted, logs_w = image_task_loss(gen, _seg_net(), x, labels, p=0.5, adv_steps=1, copy=True,
                                       restyled_weight=0.5)
    torch.testing.assert_close(weighted.detach(), torch.tensor(logs_w["clean"] + 0.5 * logs_w["perturbed"]))
    torch.testing.assert_close(torch.tensor(logs_w["clean"]), torch.tensor(logs["clean"]))


# --- save / load, encoder weights


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    gen = _tiny()
    with torch.no_grad():  # a trained-looking decoder / D-VAE, not the init (which load would also rebuild)
        for p in (*gen.decoder.parameters(), *gen.dvae.parameters()):
            p.add_(torch.randn_like(p) * 0.01)
    gen.dvae.observe(torch.randn(4, 8), torch.rand(4, 8) + 0.5)
    path = save_generator(gen, tmp_path / "run")
    assert path == tmp_path / "run" / "generator.pt"
    assert isinstance(torch.load(path, weights_only=True), dict)
    back = load_generator(tmp_path / "run")
    x, eps = _images(), torch.randn(2, 8)
    with torch.no_grad():
        assert torch.equal(back.perturb(x, eps), gen.perturb(x, eps))
    payload = torch.load(path, weights_only=True)
    payload["config"]["seed"] = 1  # a different encoder must not be paired with this decoder
    torch.save(payload, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="rebuilt encoder differs"):
        load_generator(tmp_path / "other.pt")


@pytest.mark.parametrize("layout", ["vgg19", "vgg16", "vgg_normalised"])
def test_encoder_weights_in_the_usual_layouts_load(tmp_path, layout):
    path = tmp_path / "vgg.pth"
    sd = _vgg_file(path, layout, width=8)
    width = 64 if layout == "vgg_normalised" else 8
    enc = Encoder(arch="vgg16" if layout == "vgg16" else "vgg19", width=width, weights=path, depth=2)
    first = sd["2.weight"] if layout == "vgg_normalised" else sd["features.0.weight"]
    assert torch.equal(enc.features[0].weight, first)
    assert all(not p.requires_grad for p in enc.parameters())
    gen = StyleGenerator(encoder_weights=path, depth=2)  # arch and width read from the file
    assert (gen.config["arch"], gen.config["width"]) == ("vgg16" if layout == "vgg16" else "vgg19", width)
    assert gen.perturb(_images(n=2)).shape == (2, 3, 32, 32)


def test_encoder_weights_that_do_not_fit_raise_a_clear_error(tmp_path):
    path = tmp_path / "wrong.pth"
    _vgg_file(path, "vgg19", width=8, bad="features.5.weight")
    with pytest.raises(ValueError, match=r"wrong\.pth: features\.5\.weight has shape \(17, 8, 3, 3\)"):
        StyleGenerator(encoder_weights=path)
    _vgg_file(path, "vgg19", width=16)
    with pytest.raises(ValueError, match=r"wrong\.pth: features\.0\.weight has shape \(16, 3, 3, 3\).*expects"):
        Encoder(width=8, weights=path)
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=r"wrong\.pth: no VGG key"):
        Encoder(width=8, weights=path)
    path.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"wrong\.pth: cannot be read as an npdg encoder weights"):
        Encoder(width=8, weights=path)


# --- CLI

TINY = ["--iters", "3", "--size", "32x64", "--num", "4", "--batch", "2"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dsp") / "run"
    assert main(["train", "--preset", "quick", *TINY, "--out", str(out)]) == 0
    return out


def test_cli_train_writes_the_run_directory(trained_run):
    for name in ("generator.pt", "config.json", "loss.png", "preview.png"):
        assert (trained_run / name).is_file(), name
    gen = load_generator(trained_run)
    assert (gen.config["width"], gen.config["depth"]) == (8, 2)  # the quick preset
    with Image.open(trained_run / "preview.png") as im:
        assert im.size[0] > im.size[1] > 0


def test_cli_preview_writes_a_png(trained_run, tmp_path):
    out = tmp_path / "grid.png"
    assert main(["preview", "--checkpoint", str(trained_run / "generator.pt"), "--out", str(out), "--num", "2",
                 "--styles", "1", "--adv_steps", "1"]) == 0
    with Image.open(out) as im:
        assert im.format == "PNG"


@pytest.mark.parametrize("args, message", [
    (["train", "--beta", "-1"], "--beta must be >= 0"),
    (["train", "--iters", "0"], "--iters must be >= 1"),
    (["train", "--batch", "0"], "--batch must be >= 1"),
    (["train", "--size", "0x64"], "too small"),
    (["train", "--encoder_weights", "{tmp}/wrong.pth"], "features.2.weight has shape"),
    (["train", "--encoder_weights", "{tmp}/none.pth"], "none.pth does not exist"),
    (["train", "--source", "synthetic:mars"], "unknown synthetic domain"),
    (["preview", "--checkpoint", "{tmp}/missing", "--adv_steps", "-1"], "--adv_steps must be >= 0"),
    (["preview", "--checkpoint", "{tmp}/missing"], "missing does not exist"),
    (["preview", "--checkpoint", "{run}", "--model_checkpoint", "{tmp}/m.pt"], "m.pt does not exist"),
])
def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, trained_run, capsys, args, message):
    _vgg_file(tmp_path / "wrong.pth", "vgg19", width=8, bad="features.2.weight")  # used by the quick depth
    out = tmp_path / "out" / ("grid.png" if args[0] == "preview" else "run")
    args = [a.format(tmp=tmp_path, run=trained_run) for a in args] + ["--out", str(out)]
    try:
        code = main(args)
    except SystemExit as e:  # argparse-level errors
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
