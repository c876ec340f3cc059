"""The training loop: reports, resume, divergence, STE switch, input validation, isolation."""

import json
import math
import subprocess
import sys

import pytest
import torch

from stetune.data import _DATASETS, dataset_info, register_dataset
from stetune.models import create_model, model_info, register_model
from stetune.models.registry import _MODELS
from stetune.quant import QuantAct
from stetune.spec import RunSpec, SpecError
from stetune.train import DIVERGENCE_CHECK, DeviceError, resolve_device, train

QUICK = dict(dataset="synthetic", epochs=3, batch_size=64, lr=0.05, limit=256)


class Interrupt(Exception):
    """Raised from a report callback: the run stops there, as a killed trial would."""


@pytest.fixture
def kept_models():
    """A plug-in model that is lenet5 but keeps every instance train() builds, each counting its
    training forward passes (`steps`), so a test can probe the very network the trainer trained."""
    built = []
    lenet = model_info("lenet5")

    def count_step(model, inputs):
        model.steps += model.training  # evaluate() runs in eval mode: only SGD steps count

    @register_model(epochs=lenet.epochs, batch_size=lenet.batch_size, lr=lenet.lr,
                    milestone_fracs=lenet.milestone_fracs, input_size=lenet.input_size,
                    name="kept_lenet5")
    def kept_lenet5(act, num_classes=10, in_channels=1):
        model = lenet.fn(act=act, num_classes=num_classes, in_channels=in_channels)
        model.steps = 0
        model.register_forward_pre_hook(count_step)
        built.append(model)
        return model

    yield built
    _MODELS.pop("kept_lenet5")


@pytest.fixture
def augmented_synthetic():
    """'synthetic' registered again with augment=True, as a plug-in dataset would be: training
    then draws CIFAR-style crops and flips from the same generator as the data order."""
    info = dataset_info("synthetic")
    register_dataset("synthetic-augmented", num_classes=info.num_classes,
                     input_size=info.input_size, augment=True)(info.loader)
    yield "synthetic-augmented"
    _DATASETS.pop("synthetic-augmented")


def test_reports_every_epoch_with_the_documented_metrics():
    seen = []
    result = train(RunSpec(**QUICK), seen.append)
    assert result.status == "finished" and result.epochs_run == 3 and len(seen) == 3
    keys = {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "grad_norm",
            "epoch_time", "ste", "status", "sat/act1", "sat/act2", "sat/act3", "sat/act4"}
    assert keys <= set(seen[0])
    assert [m["epoch"] for m in seen] == [1, 2, 3]
    assert all(0 <= m["sat/act1"] <= 1 for m in seen)
    assert seen[-1]["train_loss"] < seen[0]["train_loss"]
    assert result.spec["milestones"] == [1, 2] and result.code["stetune"]
    # milestone schedule: lr x0.1 after epochs 1 and 2
    assert [m["lr"] for m in seen] == pytest.approx([0.05, 0.005, 0.0005])


def test_float_run_has_no_saturation_metrics():
    result = train(RunSpec(**dict(QUICK, epochs=1, bits="float")))
    assert not any(k.startswith("sat/") for k in result.metrics)


def test_same_seed_same_result_on_cpu():
    a = train(RunSpec(**QUICK, device="cpu"))
    b = train(RunSpec(**QUICK, device="cpu"))
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]


def _final_weights(ckpt_dir):
    return torch.load(ckpt_dir / "checkpoint.pt", weights_only=False)["model"]


def test_resume_with_augmentation_repeats_history_metrics_and_weights(augmented_synthetic,
                                                                          tmp_path):
    # cpu: the same kernels in the same order, so the comparison is exact (==): any difference
    # is state the checkpoint failed to carry (weights, momentum, schedule, data order, crops)
    spec = RunSpec(**dict(QUICK, epochs=4, dataset=augmented_synthetic, milestones=[2, 3],
                          device="cpu"))
    full = []
    full_result = train(spec, full.append, checkpoint_dir=tmp_path / "full")

    cut = []

    def crash_after_2(m):
        cut.append(m)
        if m["epoch"] == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(spec, crash_after_2, checkpoint_dir=tmp_path / "cut")
    result = train(spec, cut.append, checkpoint_dir=tmp_path / "cut")

    def timeless(history):  # wall-clock time is the one thing allowed to differ
        return [{k: v for k, v in m.items() if k != "epoch_time"} for m in history]

    assert [m["epoch"] for m in cut] == [1, 2, 3, 4] and result.epochs_run == 4
    assert timeless(cut) == timeless(full)  # every reported metric, epoch by epoch
    assert timeless(result.history) == timeless(full_result.history)
    assert timeless([result.metrics]) == timeless([full_result.metrics])
    assert (result.status, result.best_val_acc) == (full_result.status, full_result.best_val_acc)
    full_ck, cut_ck = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=False)
                       for d in ("full", "cut"))
    assert torch.equal(full_ck["generator"], cut_ck["generator"])
    # the premise: training drew crops and flips from that generator, not only the data order
    order_only = torch.Generator().manual_seed(spec.seed)
    for _ in range(spec.epochs):
        torch.randperm(256, generator=order_only)
    assert not torch.equal(full_ck["generator"], order_only.get_state())
    assert full_ck["model"].keys() == cut_ck["model"].keys()
    assert all(torch.equal(full_ck["model"][k], cut_ck["model"][k]) for k in full_ck["model"])


def test_measure_start_reports_epoch_0_and_leaves_the_run_unchanged(tmp_path):
    """Epoch 0 measures the start without touching weights, BN statistics or the data order."""
    spec = dict(QUICK, epochs=2, dataset="digits", limit=300)
    train(RunSpec(**spec), checkpoint_dir=tmp_path / "plain")
    seen = []
    result = train(RunSpec(**spec, measure_start=True), seen.append, checkpoint_dir=tmp_path / "m")
    assert [m["epoch"] for m in seen] == [0, 1, 2]
    assert seen[0]["train_loss"] > seen[2]["train_loss"] and 0 <= seen[0]["val_acc"] <= 1
    assert result.best_val_acc == max(m["val_acc"] for m in seen[1:])
    plain, measured = _final_weights(tmp_path / "plain"), _final_weights(tmp_path / "m")
    assert all(torch.equal(plain[k], measured[k]) for k in plain)


def test_nan_loss_ends_the_run_as_diverged(tmp_path):
    model = create_model("lenet5", bits=2)
    state = model.state_dict()
    state["fc3.weight"][0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    seen = []
    result = train(RunSpec(**QUICK, init_from=str(tmp_path / "nan.pt")), seen.append)
    assert result.status == "diverged" and result.epochs_run == 1
    assert seen[-1]["status"] == "diverged" and seen[-1]["train_loss"] != seen[-1]["train_loss"]


def test_divergence_in_a_later_epoch_stops_mid_epoch(kept_models):
    # lr * weight_decay = 9 > 2: plain SGD's decay multiplies every weight by 1 - 9 = -8 a step,
    # so the logits grow geometrically until float32 overflows: the loss is finite for all of
    # epoch 1 (32 steps) and turns NaN at step 44 overall, the 12th of epoch 2, whatever the seed
    # (real numerics, no injected NaN; gamma <= 1 cannot raise lr at a milestone, and the data's
    # normalisation would spread an inf placed in one example over all of them).
    spec = RunSpec(dataset="synthetic", model="kept_lenet5", limit=256, batch_size=8, epochs=4,
                   lr=1.0, weight_decay=9.0, momentum=0.0, milestones=[], device="cpu")
    batches = 256 // 8
    seen = []

    def report(m):
        model = kept_models[-1]
        seen.append(dict(m, steps=model.steps))
        model.steps = 0

    result = train(spec, report)
    assert result.status == "diverged" and result.epochs_run == 2
    assert [m["epoch"] for m in result.history] == [1, 2] and len(seen) == 2
    first, last = seen
    assert first["status"] == "finished" and first["steps"] == batches
    assert all(math.isfinite(first[k]) for k in
               ("train_loss", "train_acc", "grad_norm", "lr", "val_loss", "val_acc"))
    assert last["status"] == "diverged" and not math.isfinite(last["train_loss"])
    # stopped at the first finiteness check after the loss went bad, not at the epoch's end
    assert last["steps"] < batches and (last["steps"] - 1) % DIVERGENCE_CHECK == 0, last["steps"]


def _ste_by_gradient(model) -> list[str]:
    """The STE each QuantAct of `model` applies, read from its input gradient at one point per
    region (below 0, inside (0, top), above top), not from its label: identity passes all three,
    ReLU the last two, clipped ReLU the middle one only."""
    names = {(1, 1, 1): "identity", (0, 1, 1): "relu", (0, 1, 0): "clipped_relu"}
    found = []
    for act in (m for m in model.modules() if isinstance(m, QuantAct)):
        x = torch.tensor([-1.0, act.top / 2, act.top + 1.0], requires_grad=True)
        with torch.enable_grad():
            act(x).sum().backward()
        found.append(names.get(tuple(x.grad.tolist()), f"unknown {x.grad.tolist()}"))
    return found


@pytest.mark.parametrize("ste,switch", [("clipped_relu", "identity"), ("identity", "relu"),
                                        ("relu", "clipped_relu")])
def test_ste_switch_changes_the_trained_models_gradients(kept_models, tmp_path, ste, switch):
    # each epoch's report comes after its steps, so the model's gradients then are those it was
    # trained with; epoch 3 runs after a resume, on a freshly built model that starts with `ste`
    spec = RunSpec(**dict(QUICK, model="kept_lenet5", ste=ste, switch_ste=switch, switch_ste_at=2))
    seen = []

    def probe(m):
        seen.append((m["ste"], _ste_by_gradient(kept_models[-1])))
        if m["epoch"] == 2 and len(kept_models) == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(spec, probe, checkpoint_dir=tmp_path)
    train(spec, probe, checkpoint_dir=tmp_path)
    assert len(kept_models) == 2
    assert seen == [(ste, [ste] * 4), (switch, [switch] * 4), (switch, [switch] * 4)]


def test_init_from_float_checkpoint(tmp_path):
    train(RunSpec(**dict(QUICK, bits="float", epochs=2)), checkpoint_dir=tmp_path / "fp")
    seen = []
    train(RunSpec(**dict(QUICK, epochs=1), init_from=str(tmp_path / "fp" / "checkpoint.pt")), seen.append)
    scratch = train(RunSpec(**dict(QUICK, epochs=1)))
    assert seen[0]["val_acc"] != scratch.metrics["val_acc"]  # it really started elsewhere
    with pytest.raises(FileNotFoundError, match="init_from must be an existing checkpoint"):
        train(RunSpec(**QUICK, init_from=str(tmp_path / "missing.pt")))


@pytest.mark.parametrize("kwargs,message", [
    (dict(model="alexnet"), "model must be one of .* but got model='alexnet'"),
    (dict(dataset="imagenet"), "dataset must be one of .* but got dataset='imagenet'"),
    (dict(ste="sigmoid"), "ste must be one of .* but got ste='sigmoid'"),
    (dict(bits=0), r"bits must be in 1..8 or 'float', but got bits=0"),
    (dict(bits=9), r"bits must be in 1..8 or 'float', but got bits=9"),
    (dict(lr=0.0), "lr must be > 0, but got lr=0.0"),
    (dict(lr=-1.0), "lr must be > 0, but got lr=-1.0"),
    (dict(epochs=0), "epochs must be an int >= 1, but got epochs=0"),
    (dict(batch_size=0), "batch_size must be an int >= 1, but got batch_size=0"),
    (dict(momentum=1.0), r"momentum must be in \[0, 1\), but got momentum=1.0"),
    (dict(milestones=[3, 2]), "milestones must be increasing"),
    (dict(switch_ste="relu"), "switch_ste and switch_ste_at must be given together"),
    (dict(device="tpu"), "device must be auto, cpu"),
])
def test_bad_input_names_the_field(kwargs, message):
    with pytest.raises(SpecError, match=message):
        RunSpec(**kwargs)


N_CUDA = torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.mark.parametrize("device,message", [
    pytest.param("cuda", "(this machine has no CUDA device; use auto or cpu)", marks=pytest.mark.skipif(
        N_CUDA > 0, reason="this machine has CUDA: the no-CUDA case does not apply")),
    # one past the last device, so the case applies on any machine; the message lists what there is
    (f"cuda:{N_CUDA}", "(this machine has no CUDA device; use auto or cpu)" if N_CUDA == 0 else
     f"(this machine has {N_CUDA} CUDA device{'s' * (N_CUDA > 1)}: cuda:0"),
    pytest.param("mps", "(this machine has no MPS device; use auto or cpu)", marks=pytest.mark.skipif(
        torch.backends.mps.is_available(), reason="this machine has an MPS device")),
    ("cpu:3", "(the CPU is one device; use cpu)"),
])
def test_a_device_this_machine_lacks_is_a_one_line_device_error(device, message):
    with pytest.raises(DeviceError) as info:
        resolve_device(device)
    assert str(info.value).startswith(f"device must be available on this machine, but got device='{device}' ")
    assert message in str(info.value) and "\n" not in str(info.value)
    # in a sweep, train() raises it on the worker, and the failed trial shows that one line
    with pytest.raises(DeviceError, match="must be available on this machine"):
        train(RunSpec(**dict(QUICK, device=device)))


@pytest.mark.parametrize("device", ["cuda:x", "cpu:", "xla", "meta"])
def test_a_device_string_torch_or_stetune_does_not_know_is_a_device_error(device):
    with pytest.raises(DeviceError, match=rf"device must be auto, cpu, cuda\[:N\] or mps, but got device='{device}'"):
        resolve_device(device)


def test_devices_this_machine_has_resolve():
    assert resolve_device("cpu").type == resolve_device("cpu:0").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if N_CUDA else "cpu")
    if N_CUDA:
        assert resolve_device(f"cuda:{N_CUDA - 1}") == torch.device(f"cuda:{N_CUDA - 1}")


def test_a_checkpoint_dir_that_cannot_be_written_fails_before_training(tmp_path):
    (tmp_path / "file").write_text("")
    seen = []
    with pytest.raises(OSError, match=r"checkpoint_dir must be a writable directory, but got .*\(it is a file\)"):
        train(RunSpec(**QUICK), seen.append, checkpoint_dir=tmp_path / "file")
    assert seen == []  # no epoch was run (and lost) first
    train(RunSpec(**dict(QUICK, epochs=1)), checkpoint_dir=tmp_path / "new" / "ck")  # created when missing
    assert (tmp_path / "new" / "ck" / "checkpoint.pt").is_file()


def test_unknown_spec_keys_are_errors():
    with pytest.raises(SpecError, match=r"unknown \['lr_typo'\]"):
        RunSpec.from_dict({"lr_typo": 0.1})


def test_importing_the_trainer_loads_neither_ray_nor_mlflow():
    code = ("import sys, stetune.train, stetune.cli; "
            "bad = [m for m in ('ray', 'mlflow') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_result_is_json_serialisable():
    result = train(RunSpec(**dict(QUICK, epochs=1)))
    json.dumps(result.to_dict())


def test_checkpoints_on_the_interval_at_the_end_and_when_a_stop_is_coming(tmp_path, monkeypatch):
    import stetune.train as train_mod

    saved = []
    real = train_mod.save_checkpoint
    monkeypatch.setattr(train_mod, "save_checkpoint",
                        lambda path, *a: (saved.append(a[4]), real(path, *a)))  # a[4]: the epoch
    spec = RunSpec(**dict(QUICK, epochs=4))
    train(spec, checkpoint_dir=tmp_path / "a", checkpoint_every=3600)
    assert saved == [4]  # the interval never came: the last epoch only
    saved.clear()
    asked = iter([False, True, True])  # the driver asks after epoch 2 (a stop is coming)
    train(spec, checkpoint_dir=tmp_path / "b", checkpoint_every=3600, save_now=lambda: next(asked))
    assert saved == [2, 3, 4]
    saved.clear()
    train(spec, checkpoint_dir=tmp_path / "c", checkpoint_every=0)
    assert saved == [1, 2, 3, 4]
