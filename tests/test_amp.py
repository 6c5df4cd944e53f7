"""cfg.amp (bf16 autocast on CUDA, ignored on CPU with one notice) and cfg.eval_every (source-val mIoU rows).

The CUDA autocast itself needs a GPU; here the helper is checked by construction, and the fp32 islands (D-VAE,
sensitivity, segmentation loss) and a whole training run are checked under a forced CPU bf16 autocast.
"""

import contextlib
import io
import json
import types
from contextlib import nullcontext

import pytest
import torch

import npdg.loop
from npdg import load_model
from npdg.config import load_config
from npdg.loop import Context, amp_autocast, autocast
from npdg.methods import build_method
from npdg.methods.base import Method
from npdg.train import main

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

TINY = ["--iters=4", "--train_num=8", "--val_num=2", "--crop=40x72", "--eval_size=40x72", "--workers=0",
        "--batch_size=2", "--log_every=2", "--targets=synthetic:fog", "--finetune_iters=3", "--ckpt_every=2",
        "--device=cpu", "--method=slimming", "--ratio=0.5", "--round_to=4"]
NOTICE = "amp=true is ignored on cpu"


def _run(out, *extra):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        metrics = main(TINY + list(extra) + ["--out", str(out)])
    return metrics, err.getvalue()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_intra_op_thread):
    """Three tiny slimming runs (train, prune, finetune, evaluate): plain, --amp on CPU, --eval_every=2."""
    root = tmp_path_factory.mktemp("amp")
    return {name: (root / name, *_run(root / name, *extra)) for name, extra in
            (("plain", ()), ("amp", ("--amp",)), ("eval", ("--eval_every=2",)))}


def _same_weights(a, b):
    sa, sb = load_model(a).state_dict(), load_model(b).state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _rows(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


# --- (a) amp on CPU: one notice, then the fp32 run --------------------------------------------------------

def test_amp_on_cpu_is_announced_once_and_ignored(runs):
    amp_out, _, amp_err = runs["amp"]
    plain_out, _, plain_err = runs["plain"]
    assert amp_err.count(NOTICE) == 1, amp_err[-2000:]  # once per run, not per stage
    assert amp_err.lstrip().startswith("npdg: " + NOTICE)  # at the start, before the first progress bar
    assert NOTICE not in plain_err
    assert _same_weights(amp_out / "final.pt", plain_out / "final.pt")  # trained, and exactly as in fp32


def test_amp_on_a_gpu_without_native_bf16_is_a_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    props = types.SimpleNamespace(major=7, minor=0, name="Tesla V100")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    args = [a for a in TINY if a != "--device=cpu"]
    with pytest.raises(SystemExit) as exc:
        main(args + ["--device=cuda", "--amp", "--out", str(tmp_path / "r")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "amp=true" in err and "Tesla V100" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()  # before any work
    for device in ("cuda", "cuda:0", "auto"):
        with pytest.raises(Exception, match="amp=true"):
            load_config(overrides=[f"--device={device}", "--amp"]).check_device()
        load_config(overrides=[f"--device={device}"]).check_device()  # no amp: nothing to check
    load_config(overrides=["--device=cpu", "--amp"]).check_device()  # CPU: ignored (the trainer says so)
    props.major = 8
    load_config(overrides=["--device=cuda", "--amp"]).check_device()


# --- (b) the autocast helper ------------------------------------------------------------------------------

def test_autocast_helper(monkeypatch):
    cfg = load_config(overrides=["--amp"])
    assert isinstance(autocast(Context(cfg, torch.device("cpu"))), nullcontext)
    assert isinstance(amp_autocast("cpu", True), nullcontext)
    assert isinstance(amp_autocast(torch.device("cuda", 1), False), nullcontext)
    assert isinstance(autocast(Context(load_config(), torch.device("cuda"))), nullcontext)  # amp off
    # constructing a CUDA autocast needs no GPU, but without one torch disables it: pretend one is there
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    for ac in (autocast(Context(cfg, torch.device("cuda", 0))), amp_autocast("cuda", True)):
        assert isinstance(ac, torch.autocast)
        assert (ac.device, ac.fast_dtype, ac._enabled) == ("cuda", torch.bfloat16, True)


# --- (c) the fp32 islands under bf16 autocast (forced on CPU) ---------------------------------------------

def _recipe(method="npdg"):
    from npdg.models import create_model

    torch.manual_seed(0)
    cfg = load_config(overrides=[f"--method={method}", "--sens_k=2", "--sens_batch=2", "--dsp_hidden=16",
                                 "--dsp_latent=4", "--device=cpu"])
    model = create_model(cfg.model, num_classes=cfg.num_classes)
    images, labels = torch.randn(2, 3, 40, 72), torch.randint(0, 19, (2, 40, 72))
    return build_method(Context(cfg, torch.device("cpu")), model), model, images, labels


def test_dvae_sensitivity_and_loss_stay_fp32_under_autocast(monkeypatch):
    recipe, model, images, labels = _recipe()
    dvae_out = []
    for m in recipe.dsp.dvae.modules():
        if isinstance(m, torch.nn.Linear):
            m.register_forward_hook(lambda mod, inp, out: dvae_out.append((inp[0].dtype, out.dtype)))
    import npdg.ops

    seen = []
    original = npdg.ops.style_sensitivity

    def recording(acts, precision="ieee"):
        seen.append(acts.dtype)
        return original(acts, precision=precision)

    monkeypatch.setattr(npdg.ops, "style_sensitivity", recording)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(images).dtype == torch.bfloat16  # the autocast is on: the model itself runs in bf16
        recipe.refresh_sensitivity(model, images)
        loss, logs = recipe.task_loss(model, model, images, labels)
        plain = Method.seg_loss(model(images), labels)
    assert seen and set(seen) == {torch.float32}, seen  # the Gram / variance input
    assert all(w.dtype == torch.float32 and torch.isfinite(w).all() for w in recipe.weights.values())
    assert loss.dtype == torch.float32 and plain.dtype == torch.float32 and torch.isfinite(loss)
    assert dvae_out and set(dvae_out) == {(torch.float32, torch.float32)}, set(dvae_out)
    assert logs["dsp_recon"] > 0
    # the guard is what keeps the sensitivity in fp32 (the bare pass under autocast sees bf16)
    from npdg.sensitivity import compute_sensitivity

    seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        compute_sensitivity(model, images, recipe.dsp, k=2)
    assert torch.bfloat16 in seen


def test_a_run_trains_and_evaluates_under_forced_bf16_autocast(tmp_path, monkeypatch):
    """The CUDA path end to end, with CPU bf16 standing in for it: fit and evaluate enter the helper's context."""
    entered = []

    def forced(device, amp):
        entered.append(amp)
        return torch.autocast("cpu", dtype=torch.bfloat16) if amp else nullcontext()

    monkeypatch.setattr(npdg.loop, "amp_autocast", forced)
    out = tmp_path / "run"
    metrics, _ = _run(out, "--method=npdg", "--amp", "--eval_every=2", "--sens_every=2", "--sens_batch=2",
                      "--sens_k=2")
    assert entered.count(True) >= 4 + 3 + 3  # every training step and the eval_every evaluations
    rows = _rows(out)
    assert all(r["loss"] == r["loss"] for r in rows if "loss" in r)
    assert {(r["stage"], r["step"]) for r in rows if "val_miou" in r} == {("train", 2), ("train", 4),
                                                                         ("finetune", 2)}
    assert metrics["final"]["miou"]["synthetic:source"] is not None


# --- (d) eval_every ---------------------------------------------------------------------------------------

def test_eval_every_logs_source_val_miou(runs):
    out, metrics, err = runs["eval"]
    rows = _rows(out)
    val = {(r["stage"], r["step"]): r["val_miou"] for r in rows if "val_miou" in r}
    assert list(val) == [("train", 2), ("train", 4), ("finetune", 2)]  # finetune_iters=3: no row at 3
    assert all(set(r) == {"stage", "step", "val_miou"} for r in rows if "val_miou" in r)
    # the evaluation at the train stage's last step scores dense.pt on the source val split
    assert val[("train", 4)] == pytest.approx(metrics["dense"]["miou"]["synthetic:source"])
    assert "val_miou=" in err  # on the progress bar
    # evaluating leaves training untouched (RNG, BN statistics, train mode)
    assert _same_weights(out / "final.pt", runs["plain"][0] / "final.pt")
    assert not any("val_miou" in r for r in _rows(runs["plain"][0]))  # 0 = only at the end


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_npdg_run_under_bf16_autocast_on_cuda(tmp_path):
    """The paper presets' amp path on a real GPU: an npdg run (DSP ascent, sensitivity, prune, fine-tune,
    evaluation) under bf16 autocast finishes with finite scores, and the sensitivity weights stayed fp32."""
    args = [a for a in TINY if a not in ("--device=cpu", "--method=slimming")]
    metrics = main(args + ["--device=cuda", "--amp", "--method=npdg", "--sens_every=2", "--sens_batch=2",
                           "--sens_k=2", "--out", str(tmp_path / "r")])
    assert all(0.0 <= v <= 100.0 for v in metrics["final"]["miou"].values())
    assert metrics["final"]["flops"] < metrics["dense"]["flops"]
    sens = json.loads((tmp_path / "r" / "sensitivity.json").read_text())
    assert all(v == v for w in sens["weights"].values() for v in w)  # no NaN from bf16 variances


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("flag", [True, False])
def test_training_sets_the_cudnn_algorithm_choice(flag, tmp_path):
    """npdg.train on CUDA runs with cuDNN's algorithms timed per shape (cudnn_benchmark, the default) or its
    heuristics (--cudnn_benchmark=false)."""
    torch.backends.cudnn.benchmark = not flag
    args = [a for a in TINY if a != "--device=cpu"]
    main(args + ["--device=cuda", "--iters=1", f"--cudnn_benchmark={str(flag).lower()}", "--out", str(tmp_path / "r")])
    assert torch.backends.cudnn.benchmark is flag
