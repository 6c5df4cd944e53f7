"""finetune_kd (issue 16): the pruned model's fine-tune also learns the dense model's predictions on the clean
images (KL divergence, temperature 1)."""

import copy
import json

import pytest
import torch

from npdg.config import Config, ConfigError, load_config
from npdg.dsp.perturb import distill_kl
from npdg.loop import Context
from npdg.methods import build_method
from npdg.models import create_model
from npdg.train import main

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

RUN = ["--method=npdg", "--iters=4", "--train_num=8", "--val_num=2", "--crop=40x72", "--eval_size=40x72",
       "--workers=0", "--batch_size=2", "--targets=synthetic:fog", "--finetune_iters=3", "--sens_every=2",
       "--sens_batch=2", "--sens_k=2", "--log_every=1", "--dsp_warmup=0", "--device=cpu"]


def test_distill_kl_matches_a_float64_reference():
    torch.manual_seed(0)
    student, teacher = torch.randn(3, 7, 5, 6), torch.randn(3, 7, 5, 6) * 2
    t, s = teacher.double().softmax(1), student.double().softmax(1)
    expected = (t * (t.log() - s.log())).sum(1).mean()
    torch.testing.assert_close(distill_kl(student, teacher).double(), expected, rtol=1e-5, atol=1e-7)
    assert distill_kl(teacher, teacher).abs() < 1e-6
    # its gradient moves the student towards the teacher
    student.requires_grad_(True)
    distill_kl(student, teacher).backward()
    with torch.no_grad():
        assert distill_kl(student - 0.5 * student.grad, teacher) < distill_kl(student, teacher)


@pytest.mark.parametrize("copy_", [True, False], ids=["copies", "replaced"])
def test_the_teacher_sees_the_same_clean_images_as_the_student_rows_it_is_compared_with(copy_):
    """An eval-mode student equal to its teacher has KL 0 on its clean rows, while its restyled rows differ
    (so comparing the wrong rows would not be 0)."""
    torch.manual_seed(0)
    cfg = Config(method="npdg", finetune_kd=1.0, dsp_copy=copy_, dsp_p=0.5, device="cpu").validate()
    model = create_model("deeplabv3plus_r18", num_classes=19).eval()
    recipe = build_method(Context(cfg, torch.device("cpu")), model)
    recipe.teacher = copy.deepcopy(model)
    images, labels = torch.randn(4, 3, 40, 72), torch.randint(0, 19, (4, 40, 72))
    seen = []
    model.register_forward_hook(lambda m, i, out: seen.append(out.detach()))
    loss, logs = recipe.finetune_loss_fn(model)(model, 1, images, labels)
    assert logs["kd"] < 1e-6
    restyled = seen[-1][:2]  # the training forward's first 2 rows are restyled (copies or in place)
    with torch.no_grad():
        assert distill_kl(restyled, model(images[:2])) > 1e-3
    recipe.teacher = None  # no teacher: no term
    assert "kd" not in recipe.finetune_loss_fn(model)(model, 1, images, labels)[1]


def _rows(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_a_kd_run_distils_in_the_finetune_only_and_changes_the_result(tmp_path):
    import npdg

    main(RUN + ["--finetune_kd=1", "--out", str(tmp_path / "kd")])
    main(RUN + ["--out", str(tmp_path / "plain")])
    rows = [r for r in _rows(tmp_path / "kd") if "loss" in r]
    assert {(r["stage"], "kd" in r) for r in rows} == {("train", False), ("finetune", True)}
    assert all(r["kd"] > 0 for r in rows if r["stage"] == "finetune")  # the pruned model is not the dense one
    assert not any("kd" in r for r in _rows(tmp_path / "plain"))
    a, b = (npdg.load_model(tmp_path / d / "final.pt").state_dict() for d in ("kd", "plain"))
    assert not all(torch.equal(a[k], b[k]) for k in a)
    dense_a, dense_b = (npdg.load_model(tmp_path / d / "dense.pt").state_dict() for d in ("kd", "plain"))
    assert all(torch.equal(dense_a[k], dense_b[k]) for k in dense_a)  # the train stage is untouched


def test_finetune_kd_is_range_checked():
    with pytest.raises(ConfigError, match="finetune_kd"):
        load_config(None, ["--finetune_kd=-1"])
