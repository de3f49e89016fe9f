"""Models from another library by ``model.name``: timm classifiers (``model=timm model.name=resnet10t``)."""

from __future__ import annotations

import sys

import pytest
import torch

from aistudio import AistudioError
from aistudio.models.surgery import head_modules
from aistudio.models.timm_models import build_timm_classifier
from aistudio.runs.record import load_run
from tests.helpers import FAST_TRAIN, run_train

timm = pytest.importorskip("timm", reason='timm is not installed (pip install -e ".[timm]")')


@pytest.mark.parametrize("in_channels", [3, 1])
def test_builds_with_the_class_count_and_input_channels(in_channels):
    model = build_timm_classifier("resnet10t", num_classes=5, in_channels=in_channels, bn_momentum=0.2).eval()
    with torch.no_grad():
        assert model(torch.randn(2, in_channels, 32, 32)).shape == (2, 5)
    assert {m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.2}


@pytest.mark.parametrize(("name", "head"), [("resnet10t", ["fc"]), ("convnext_atto", ["head.fc"]),
                                            ("efficientnet_b0", ["classifier"])])
def test_the_task_finds_the_head_of_timm_models(name, head):
    # efficientnet_b0 has squeeze-excitation 1x1 convs with 10 outputs: only timm's declared head is the head
    assert head_modules(build_timm_classifier(name, num_classes=10), 10) == head


def test_a_pretrained_tag_is_refused_without_downloading():
    with pytest.raises(AistudioError, match="downloaded from the Hugging Face hub, which aistudio does not do") as info:
        build_timm_classifier("resnet10t", num_classes=3, weights="c3_in1k")
    assert "timm.create_model('resnet10t.c3_in1k', pretrained=True)" in str(info.value)
    assert "\n" not in str(info.value)


def test_a_local_weights_file_loads_and_a_new_head_stays_at_init(tmp_path):
    source = build_timm_classifier("resnet10t", num_classes=7)
    path = tmp_path / "resnet10t.pth"
    torch.save(source.state_dict(), path)

    same = build_timm_classifier("resnet10t", num_classes=7, weights=str(path))
    assert all(torch.equal(value, same.state_dict()[key]) for key, value in source.state_dict().items())

    other = build_timm_classifier("resnet10t", num_classes=3, weights=str(path))  # fine-tuning on other classes
    assert torch.equal(other.conv1[0].weight, source.conv1[0].weight) and other.fc.out_features == 3


def test_an_unknown_name_suggests_timm_names():
    with pytest.raises(AistudioError, match=r"model.name='resnet10x' is not a timm classification model\. Did you "
                                            r"mean: .*resnet10t.*see timm.list_models\(\)"):
        build_timm_classifier("resnet10x", num_classes=3)


def test_timm_missing_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` now raises ImportError
    with pytest.raises(AistudioError, match=r'needs the timm package.*pip install -e "\.\[timm\]"'):
        build_timm_classifier("resnet10t", num_classes=3)


@pytest.mark.slow
def test_an_unknown_name_fails_in_one_line_before_anything_is_built(tmp_path, color_project):
    run_dir = tmp_path / "run"
    result = run_train(["data=project", f"data.project={color_project}", *FAST_TRAIN, "model=timm",
                        "model.name=not_a_timm_model", f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "model.name='not_a_timm_model' is not a timm classification model" in errors[0], \
        result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert load_run(run_dir)["status"] == "failed" and not (run_dir / "checkpoints").exists()


@pytest.mark.slow
def test_train_py_trains_a_timm_model_on_the_builtin_data(tmp_path, data_dir):
    run_dir = tmp_path / "run"
    result = run_train(["model=timm", "model.name=resnet10t", "data.channels=1", "hardware=cpu", "data.num_workers=0",
                        "data.image_size=32", "data.batch_size=16", "callbacks.progress_bar.kind=none", "logger=csv",
                        "trainer.max_epochs=1", "trainer.limit_train_batches=5", "trainer.limit_val_batches=2",
                        "trainer.limit_test_batches=2", f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    record = load_run(run_dir)
    assert record["status"] == "completed" and record["model"] == "resnet10t"
    assert {"train_loss", "val_loss", "val_acc"} <= set(record["final_metrics"])
    assert "test_acc" in record["test_metrics"] and (run_dir / "checkpoints" / "best.ckpt").is_file()
    # the task split the timm model's head (fc) from its backbone
    assert {"lr_backbone", "lr_head"} <= set(record["final_metrics"])
