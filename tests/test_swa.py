"""swa (issue 16): the final model is the uniform average of the last training stage's last iterates."""

import json

import pytest
import torch
from test_train import TINY

import npdg.loop
from npdg import load_model
from npdg.config import ConfigError, load_config
from npdg.loop import IterateAverage
from npdg.train import main

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _net():
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))


def test_the_average_is_the_mean_of_the_last_iterates():
    torch.manual_seed(0)
    net, avg = _net(), IterateAverage.for_stage(6, 0.5)
    assert avg.begin == 4  # steps 4, 5, 6
    states = []
    for step in range(1, 7):
        with torch.no_grad():
            for t in net.state_dict().values():
                t.copy_(torch.randn(t.shape) * 3 + 1 if t.is_floating_point() else torch.tensor(step))
        states.append({k: v.clone().double() for k, v in net.state_dict().items()})
        avg.update(net, step)
    assert avg.count == 3
    out = _net()
    avg.apply(out)
    for k, v in out.state_dict().items():
        if v.is_floating_point():
            expected = sum(s[k] for s in states[3:]) / 3
            torch.testing.assert_close(v.double(), expected, rtol=1e-6, atol=1e-6)
        else:  # BatchNorm's num_batches_tracked: the latest iterate's
            assert v.item() == 6


def test_for_stage_counts_the_last_fraction_of_steps():
    assert IterateAverage.for_stage(200, 0.5).begin == 101
    assert IterateAverage.for_stage(200, 1.0).begin == 1
    assert IterateAverage.for_stage(200, 0.0) is None
    assert IterateAverage.for_stage(3, 0.1) is None  # rounds to no step: the last iterate
    empty = IterateAverage(5)
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    empty.apply(net)  # nothing averaged yet: the model is left as it is
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_a_run_saves_the_average_of_the_finetune_iterates(tmp_path, monkeypatch):
    seen = []
    original = IterateAverage.update

    def spy(self, model, step):
        if step >= self.begin:
            seen.append((step, {k: v.detach().clone().double() for k, v in model.state_dict().items()}))
        return original(self, model, step)

    monkeypatch.setattr(npdg.loop.IterateAverage, "update", spy)
    out = tmp_path / "swa"
    main(TINY + ["--method=slimming", "--ratio=0.5", "--round_to=4", "--finetune_iters=4", "--swa=0.75",
                 "--out", str(out)])
    assert [s for s, _ in seen] == [2, 3, 4]  # the fine-tune's last three steps; the train stage is not averaged
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["final"]["averaged_iterates"] == {"finetune": 3}
    final = load_model(out / "final.pt").state_dict()
    for k, v in final.items():
        if v.is_floating_point():
            torch.testing.assert_close(v.double(), sum(s[k] for _, s in seen) / 3, rtol=1e-5, atol=1e-6)
    assert not all(torch.allclose(final[k].double(), seen[-1][1][k]) for k in final)  # not the last iterate


def test_erm_averages_its_train_stage(tmp_path):
    out = tmp_path / "erm"
    main(TINY + ["--method=erm", "--swa=0.5", "--out", str(out)])
    assert json.loads((out / "metrics.json").read_text())["final"]["averaged_iterates"] == {"train": 2}


@pytest.mark.parametrize("value", ["-0.1", "1.5", "nan"])
def test_swa_is_range_checked(value):
    with pytest.raises(ConfigError, match="swa"):
        load_config(None, [f"--swa={value}"])
