"""shade (Zhao et al. 2022): farthest-point sampling of the basis styles, hallucinated styles in the basis's convex
hull, the step's loss = CE over clean + hallucinated rows + lambda_SC x JSD (+ lambda_RC x RC), the basis schedule,
the key checks, and the run end to end from the CLI."""

import copy
import json

import pytest
import torch

from npdg.config import ConfigError, load_config
from npdg.loop import Context
from npdg.methods import build_method
from npdg.methods.base import Method
from npdg.methods.shade import combine_styles, farthest_points, jsd
from npdg.models import create_model
from npdg.reference import style_stats
from npdg.train import main

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

TINY = ["--train_num=8", "--val_num=2", "--crop=40x72", "--eval_size=40x72", "--workers=0", "--batch_size=2",
        "--log_every=1", "--targets=synthetic:fog", "--ckpt_every=2", "--method=shade"]


def test_farthest_point_sampling_picks_the_farthest_points():
    # on a line: from 0 the farthest is 10, then 4.5 (4.5 from both), then 6 (1.5 from 4.5, 4 from 10)
    points = torch.tensor([[0.0, 0], [1, 0], [4.5, 0], [10, 0], [6, 0], [9.5, 0]])
    assert farthest_points(points, 4, start=0).tolist() == [0, 3, 2, 4]
    assert farthest_points(points, 2, start=3).tolist() == [3, 0]
    square = torch.tensor([[0.0, 0], [0.1, 0.1], [1, 1], [0.9, 0.2], [0, 1], [0.5, 0.5]])
    assert farthest_points(square, 3, start=1).tolist() == [1, 2, 4]  # (1, 1) first, then the corner far from both


def test_jsd_is_zero_for_equal_predictions_positive_otherwise_and_symmetric():
    a = torch.randn(2, 5, 4, 6)
    assert jsd(a, a.clone()).abs().item() < 1e-6
    b = torch.randn(2, 5, 4, 6)
    assert jsd(a, b).item() > 1e-3
    torch.testing.assert_close(jsd(a, b), jsd(b, a))
    p, q = a.softmax(1), b.softmax(1)
    m = (p + q) / 2
    want = ((p * (p / m).log()).sum(1) + (q * (q / m).log()).sum(1)).mean() / 2
    torch.testing.assert_close(jsd(a, b), want)
    assert jsd(a, a + 100).abs().item() < 1e-6  # a shift of every class: the same distribution


def test_the_jsd_gradient_is_the_derivative_of_its_value():
    from npdg.methods.shade import _JSD

    gen = torch.Generator().manual_seed(4)
    a, b = (torch.randn(2, 5, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(_JSD.apply, (a, b))


def _setup(*extra, model="deeplabv3plus_r18"):
    cfg = load_config(None, TINY + ["--iters=6", "--shade_every=2", "--shade_k=3", *extra])
    torch.manual_seed(0)
    net = create_model(model, num_classes=5).train()
    return cfg, net, build_method(Context(cfg, torch.device("cpu")), net)


def _batch(b=2):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(b, 3, 32, 64, generator=gen), torch.randint(0, 5, (b, 32, 64), generator=gen)


def test_hallucinated_styles_lie_in_the_convex_hull_of_the_basis():
    _, _, method = _setup()
    c = 8
    gen = torch.Generator().manual_seed(2)
    basis = (torch.randn(2, c, generator=gen), torch.rand(2, c, generator=gen) + 0.5)  # K = 2: a segment
    method.basis = basis
    f = torch.randn(4, c, 6, 6, generator=gen) * 3 + 1
    out = method.hallucinate(f)
    assert out.shape[0] == 8 and torch.equal(out[:4], f)  # the clean rows first, untouched
    mean, std = style_stats(out[4:])
    # every hallucinated style is (1 - t) s_1 + t s_2 with ONE t in [0, 1] for all channels, means and stds alike
    t_mean = (mean - basis[0][0]) / (basis[0][1] - basis[0][0])
    t_std = (std - basis[1][0]) / (basis[1][1] - basis[1][0])
    t = t_mean[:, :1]
    torch.testing.assert_close(t_mean, t.expand_as(t_mean), atol=1e-3, rtol=0)
    torch.testing.assert_close(t_std, t.expand_as(t_std), atol=1e-3, rtol=0)
    assert bool(((t >= -1e-4) & (t <= 1 + 1e-4)).all())
    w = torch.tensor([[0.25, 0.75]])
    torch.testing.assert_close(combine_styles(*basis, w)[0], 0.25 * basis[0][:1] + 0.75 * basis[0][1:])


def _loss_and_logits(method, net, images, labels):
    seen = []

    def forward(x):
        seen.append(net(x))
        return seen[-1]

    loss, logs = method.task_loss(forward, net, images, labels)
    return loss, logs, seen[-1]


def test_the_loss_is_ce_over_clean_and_hallucinated_rows_plus_the_weighted_jsd():
    cfg, net, method = _setup()
    images, labels = _batch()
    method.bank = [torch.cat(style_stats(torch.randn(6, net.style_channels, 5, 5) * 2), 1)]
    method.choose_basis()
    loss, logs, logits = _loss_and_logits(method, net, images, labels)
    assert logits.shape[0] == 4  # the clean batch and its hallucinated copies (branched at the style layer)
    ce = Method.seg_loss(logits, torch.cat([labels, labels]))
    sc = jsd(logits[:2], logits[2:])
    torch.testing.assert_close(loss, ce + cfg.shade_sc * sc)
    assert sc.item() > 0 and logs["shade_sc"] == pytest.approx(sc.item())
    # each part counts: the hallucinated rows' CE differs from the clean rows', and the JSD is not negligible
    assert abs(Method.seg_loss(logits[2:], labels).item() - Method.seg_loss(logits[:2], labels).item()) > 1e-4
    assert cfg.shade_sc * sc.item() > 1e-3 * loss.item()


def test_the_jsd_gradient_reaches_the_model():
    grads = {}
    for sc in ("0", "10"):
        _, net, method = _setup(f"--shade_sc={sc}")
        method.bank = [torch.cat(style_stats(torch.randn(6, net.style_channels, 5, 5) * 2), 1)]
        torch.manual_seed(5)  # the same basis and Dirichlet draws both times
        method.choose_basis()
        loss, _, _ = _loss_and_logits(method, net, *_batch())
        loss.backward()
        grads[sc] = torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None])
    assert (grads["10"] - grads["0"]).abs().max().item() > 1e-6


def test_the_basis_is_chosen_every_shade_every_steps_from_the_styles_seen():
    cfg, net, method = _setup()
    loss_fn = method.train_loss_fn(net)
    images, labels = _batch()
    rows = []
    chosen = []
    choose = method.choose_basis

    def spy():
        styles = torch.cat(method.bank)
        choose()
        chosen.append((step, len(styles)))
        basis = torch.cat(method.basis, 1)
        assert all(bool((styles == row).all(1).any()) for row in basis)  # basis styles are seen styles
        assert len(method.bank) == 0

    def forward(x):
        out = net(x)
        rows.append(out.shape[0])
        return out

    method.choose_basis = spy
    for step in range(1, 7):
        loss_fn(forward, step, images, labels)
    assert chosen == [(3, 4), (5, 4)]  # after steps 2 and 4, from the 2 x 2 styles of the steps since
    assert rows == [2, 2, 4, 4, 4, 4]  # the first shade_every steps: the clean batch only


def test_retrospection_adds_the_feature_distance_to_the_imagenet_model():
    cfg, net, method = _setup()
    images, labels = _batch()
    bank = [torch.cat(style_stats(torch.randn(6, net.style_channels, 5, 5) * 2), 1)]
    method.bank = list(bank)
    torch.manual_seed(3)
    method.choose_basis()
    plain, _, _ = _loss_and_logits(method, net, images, labels)
    method.teacher = copy.deepcopy(net).eval().requires_grad_(False)
    method.bank = list(bank)
    torch.manual_seed(3)  # the same basis and draws
    method.choose_basis()
    loss, logs, _ = _loss_and_logits(method, net, images, labels)
    assert logs["shade_rc"] > 0
    torch.testing.assert_close(loss, plain + cfg.shade_rc * logs["shade_rc"], rtol=1e-4, atol=1e-5)


def test_the_defaults_are_the_papers_and_spend_the_budget():
    cfg = load_config(None, ["--method=shade"])
    assert (cfg.shade_k, cfg.shade_concentration, cfg.shade_sc, cfg.shade_rc) == (64, 0.0156, 10.0, 1.0)
    assert cfg.iters == 260 and not cfg.prunes


@pytest.mark.parametrize("bad, message", [
    (["--shade_k=41", "--shade_every=20"], "shade_k=41 exceeds the 40 source styles"),
    (["--shade_k=0"], "shade_k must be >= 1"),
    (["--shade_every=0"], "shade_every must be >= 1"),
    (["--shade_concentration=0"], "shade_concentration must be in (0, inf]"),
    (["--shade_sc=-1"], "shade_sc must be in [0, inf]"),
    (["--method=shadow"], "method='shadow': expected one of erm, slimming, dsp, npdg, sfp, shade"),
])
def test_bad_shade_keys_are_one_line_usage_errors(tmp_path, capsys, bad, message):
    with pytest.raises(SystemExit) as exc:
        main(TINY + ["--iters=4", "--shade_k=3"] + bad + ["--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_too_few_styles_seen_names_the_key():
    _, _, method = _setup()
    method.bank = [torch.randn(2, 16)]
    with pytest.raises(ConfigError, match="shade_k=3 exceeds the 2 source styles seen"):
        method.choose_basis()


def test_shade_runs_end_to_end_on_the_quick_preset(tmp_path):
    out = tmp_path / "shade"
    main(["--preset=quick", *TINY, "--budget=4", "--shade_every=2", "--shade_k=3", "--out", str(out)])
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == "shade" and m["steps"]["train"] == 4
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [("shade_sc" in r) for r in rows if "loss" in r] == [False, False, True, True]


def test_retrospection_runs_with_pretrained_weights_only(tmp_path):
    weights = tmp_path / "r18_backbone.pth"
    torch.manual_seed(0)
    torch.save(create_model("deeplabv3plus_r18").backbone.state_dict(), weights)
    logs = {}
    for name, extra in (("plain", []), ("imagenet", [f"--pretrained={weights}"])):
        main(TINY + ["--iters=4", "--shade_every=2", "--shade_k=3", *extra, "--out", str(tmp_path / name)])
        logs[name] = [json.loads(line) for line in (tmp_path / name / "train_log.jsonl").read_text().splitlines()]
    assert not any("shade_rc" in r for r in logs["plain"])  # no ImageNet weights: no retrospection
    assert [r.get("shade_rc", 0) > 0 for r in logs["imagenet"] if "loss" in r] == [False, False, True, True]
