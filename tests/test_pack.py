"""Trial packs: K members trained as one vectorised model reproduce K separate train() runs,
leave the pack when stopped or diverged, and resume from one checkpoint bit-exactly.

Tolerance. On CPU a pack runs in its sequential mode (stetune.pack_model): each member's forward
and backward run train()'s kernels at train()'s shapes, and the batched rest (the SGD update,
the metric sums) rounds as train()'s ops do. Measured over every case below (LeNet-5 K=3 on digits with different
seeds, lrs, momentum, weight decay, gamma and alpha_scale; ResNet-20 K=2; each with a diverging
member): the largest difference in any reported metric was 0, so the bound is 0 (==): any
difference is a bug, not rounding. The fused mode (the CUDA default: grouped convolutions,
channel-folded BatchNorm) reorders float sums; its bounds are measured in its own tests below."""

from __future__ import annotations

import copy
import functools
import json
import math
import subprocess
import sys

import pytest
import torch

import stetune.pack as pack_mod
from stetune.checkpoint import load_weights
from stetune.data import _DATASETS, dataset_info, load_dataset, register_dataset
from stetune.models import create_model
from stetune.pack import PackError, member_weights, pack_key, train_pack
from stetune.pack_model import PackedModel, StackedSGD, pack_step
from stetune.spec import RunSpec
from stetune.train import evaluate, train, train_step

# 25 steps an epoch: the divergence check (every 20 steps) can fire mid-epoch
LENET = dict(dataset="digits", limit=400, epochs=2, batch_size=16, milestones=[1], device="cpu")
LENET_MEMBERS = [dict(seed=0, lr=0.05),
                 dict(seed=1, lr=0.1, momentum=0.8, weight_decay=5e-4),
                 dict(seed=2, lr=0.02, gamma=0.5, alpha_scale=1.3)]
# lr * weight_decay = 9: each step multiplies the weights by -8, so the logits overflow within
# about 45 steps whatever the seed (test_train's divergence case): here the check at step 20
# of epoch 2 catches it, with 4 steps of that epoch left to the others
LENET_DIVERGES = dict(seed=3, lr=1.0, weight_decay=9.0, momentum=0.0, gamma=1.0)
RESNET = dict(model="resnet20", dataset="synthetic", limit=32, epochs=2, batch_size=16,
              milestones=[1], device="cpu")
SMALL = dict(LENET, limit=160, epochs=3, milestones=[2])  # 10 steps an epoch: resume, saves
RESNET_MEMBERS = [dict(seed=0, lr=0.05),
                  dict(seed=1, lr=0.1, momentum=0.8, weight_decay=5e-4, alpha_scale=0.8)]
RESNET_DIVERGES = dict(seed=2, lr=1e30, momentum=0.0)  # weights past float32 by the 2nd step


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small models on a shared 2-core box: one intra-op thread is many times faster than two
    that wait for each other (31 s vs 0.9 s for one LeNet run here under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Interrupt(Exception):
    """Raised from a report callback: the pack stops there, as a killed trial would."""


def _specs(base: dict, members: list[dict]) -> list[RunSpec]:
    return [RunSpec(**base, **m) for m in members]


@functools.cache
def _separate_json(spec_json: str):
    return train(RunSpec(**json.loads(spec_json)))


def separate(spec: RunSpec):
    """train() of `spec`, once per test session (several tests compare against the same runs)."""
    return _separate_json(json.dumps(spec.to_dict(), sort_keys=True))


def timeless(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k != "epoch_time"} for m in history]


def same(a, b) -> bool:
    """== that takes NaN as equal to NaN (a diverged member's losses)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def assert_same_metrics(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(timeless(got), timeless(want)):
        assert g.keys() == w.keys()
        bad = {k: (g[k], w[k]) for k in w if not same(g[k], w[k])}
        assert not bad, f"epoch {w['epoch']}: {bad}"


def assert_like_separate(result, sep, reports=None) -> None:
    assert (result.status, result.epochs_run) == (sep.status, sep.epochs_run)
    assert_same_metrics(result.history, sep.history)
    assert same(result.best_val_acc, sep.best_val_acc) and result.spec == sep.spec
    if reports is not None:  # what report() saw: the history, each with the run's status then
        statuses = ["finished"] * (len(sep.history) - 1) + [sep.status]
        assert_same_metrics(reports, [dict(h, status=s) for h, s in zip(sep.history, statuses)])


def collect():
    seen: dict[int, list[dict]] = {}

    def report(i, metrics):
        seen.setdefault(i, []).append(metrics)

    return seen, report


@pytest.mark.parametrize("diverging", [False, True], ids=["all-finish", "one-diverges"])
def test_lenet_pack_reproduces_separate_runs(diverging, monkeypatch):
    specs = _specs(LENET, LENET_MEMBERS + [LENET_DIVERGES] * diverging)
    seen, report = collect()
    frozen_steps = []
    real_step = pack_mod.pack_step

    def spy(model, opt, x, y, frozen=None):  # steps run with a member frozen
        frozen_steps.append(frozen is not None)
        return real_step(model, opt, x, y, frozen)

    monkeypatch.setattr(pack_mod, "pack_step", spy)
    results = train_pack(specs, report)
    for i, spec in enumerate(specs):
        assert_like_separate(results[i], separate(spec), seen[i])
    assert [r.status for r in results[:3]] == ["finished"] * 3
    if diverging:  # the premise: it diverged mid-epoch, at a check, while the others went on
        assert results[3].status == "diverged" and len(seen[3]) == results[3].epochs_run == 2
        assert frozen_steps == [False] * 46 + [True] * 4  # frozen after step 21 of epoch 2
    else:
        assert not any(frozen_steps)


@pytest.mark.parametrize("diverging", [False, True], ids=["all-finish", "one-diverges"])
def test_resnet20_pack_reproduces_separate_runs(diverging):
    specs = _specs(RESNET, RESNET_MEMBERS + [RESNET_DIVERGES] * diverging)
    seen, report = collect()
    results = train_pack(specs, report)
    for i, spec in enumerate(specs):
        assert_like_separate(results[i], separate(spec), seen[i])
    if diverging:
        assert results[2].status == "diverged"


@pytest.fixture
def augmented_synthetic():
    """'synthetic' registered again with augment=True (as in test_train): each member then
    draws its crops and flips from its own generator, after its data order."""
    info = dataset_info("synthetic")
    register_dataset("synthetic-augmented-pack", num_classes=info.num_classes,
                     input_size=info.input_size, augment=True)(info.loader)
    yield "synthetic-augmented-pack"
    _DATASETS.pop("synthetic-augmented-pack")


def test_augmented_members_draw_their_own_crops(augmented_synthetic):
    specs = _specs(dict(LENET, dataset=augmented_synthetic, limit=64), LENET_MEMBERS[:2])
    for got, spec in zip(train_pack(specs), specs):
        assert_like_separate(got, train(spec))


def test_a_stopped_member_leaves_and_the_others_go_on_unchanged(tmp_path):
    specs = _specs(LENET, LENET_MEMBERS)
    seen, log = collect()

    def report(i, metrics):
        log(i, metrics)
        return i == 1 and metrics["epoch"] == 1  # ASHA stops member 1 after its first epoch

    results = train_pack(specs, report, checkpoint_dir=tmp_path)
    assert results[1].status == "pruned" and results[1].epochs_run == 1
    assert [m["epoch"] for m in seen[1]] == [1] and seen[1][0]["status"] == "finished"
    assert timeless(results[1].history) == timeless(separate(specs[1]).history[:1])
    for i in (0, 2):
        assert_like_separate(results[i], separate(specs[i]), seen[i])
    # compacted: the stacked tensors hold the two members left, nothing of member 1
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["active"] == [0, 2]
    assert all(len(p) == 2 for p in state["params"].values())
    assert all(len(b) == 2 for b in state["momentum"].values())


def test_a_pack_whose_members_all_leave_at_once_ends_and_resumes_as_ended(tmp_path):
    specs = _specs(SMALL, LENET_MEMBERS[:2])
    results = train_pack(specs, lambda i, m: True, checkpoint_dir=tmp_path)  # all pruned at 1
    assert [(r.status, r.epochs_run) for r in results] == [("pruned", 1)] * 2
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["active"] == [] and all(len(p) == 0 for p in state["params"].values())
    again = train_pack(specs, lambda i, m: pytest.fail("an ended member trained on"),
                       checkpoint_dir=tmp_path)  # a retry of the pack from that checkpoint
    assert [r.epochs_run for r in again] == [1, 1]


def _policy(i, metrics):
    return i == 2 and metrics["epoch"] == 1  # member 2 stopped after epoch 1


@pytest.fixture(scope="module")
def finished_pack(tmp_path_factory, one_thread):
    """A pack run to the end with a checkpoint every epoch; member 2 stopped after epoch 1."""
    folder = tmp_path_factory.mktemp("full")
    results = train_pack(_specs(SMALL, LENET_MEMBERS), _policy, checkpoint_dir=folder)
    return results, folder / "checkpoint.pt"


def test_an_interrupted_pack_resumes_bit_exactly(finished_pack, tmp_path):
    full, full_path = finished_pack
    specs = _specs(SMALL, LENET_MEMBERS)
    order = []

    def crash(i, metrics):
        order.append((i, metrics["epoch"]))
        if (i, metrics["epoch"]) == (1, 2):
            raise Interrupt
        return _policy(i, metrics)

    with pytest.raises(Interrupt):
        train_pack(specs, crash, checkpoint_dir=tmp_path, checkpoint_every=0)

    def again(i, metrics):
        order.append((i, metrics["epoch"]))
        return _policy(i, metrics)

    resumed = train_pack(specs, again, checkpoint_dir=tmp_path, checkpoint_every=0)
    # the epoch whose report raised was not saved: the rerun repeats it, reporting it again
    assert order == [(0, 1), (1, 1), (2, 1), (0, 2), (1, 2), (0, 2), (1, 2), (0, 3), (1, 3)]
    for got, want in zip(resumed, full):
        assert timeless(got.history) == timeless(want.history)
        assert (got.status, got.epochs_run, got.best_val_acc) == (want.status, want.epochs_run,
                                                                  want.best_val_acc)
    cut, done = (torch.load(p, weights_only=True) for p in (tmp_path / "checkpoint.pt", full_path))
    for part in ("params", "buffers", "momentum"):
        assert all(torch.equal(cut[part][n], done[part][n]) for n in done[part])
    assert all(torch.equal(a, b) for a, b in zip(cut["generators"], done["generators"]))
    assert [r.status for r in full] == ["finished", "finished", "pruned"]


def test_member_weights_load_into_a_fresh_model_and_score_its_last_epoch(finished_pack, tmp_path):
    full, path = finished_pack
    state = torch.load(path, weights_only=True)  # plain data: loads without unpickling code
    for i in (0, 1):
        weights = member_weights(state, i)
        spec = weights["spec"]
        assert spec == full[i].spec
        model = create_model(spec["model"], bits=spec["bits"], ste=spec["ste"], alpha=spec["alpha"],
                             alpha_scale=spec["alpha_scale"], num_classes=10, in_channels=1)
        model.load_state_dict(weights["model"], strict=True)
        data = load_dataset(spec["dataset"], limit=spec["limit"], seed=spec["seed"])
        assert evaluate(model, data.x_val, data.y_val)["val_acc"] == full[i].metrics["val_acc"]
        torch.save(weights, tmp_path / f"m{i}.pt")  # the plain format: load_weights knows it
        load_weights(create_model("lenet5", bits=2), tmp_path / f"m{i}.pt")
    with pytest.raises(ValueError, match=r"member i must be in the pack when it was saved, but "
                                         r"got i=2 \(status 'pruned'"):
        member_weights(state, 2)


def test_checkpoint_every_saves_less_but_always_the_last_epoch_and_departures(monkeypatch,
                                                                              tmp_path):
    saved = []
    real = pack_mod.save_pack

    def counting(path, state):
        saved.append(state["epoch"])
        real(path, state)

    monkeypatch.setattr(pack_mod, "save_pack", counting)
    specs = _specs(dict(SMALL, limit=48), LENET_MEMBERS[:2])
    train_pack(specs, checkpoint_dir=tmp_path / "a", checkpoint_every=3600)
    assert saved == [3]
    saved.clear()
    train_pack(specs, lambda i, m: i == 1 and m["epoch"] == 1, checkpoint_dir=tmp_path / "b",
               checkpoint_every=3600)
    assert saved == [1, 3]  # the epoch member 1 left, and the last
    saved.clear()
    asked = iter([False, True, True])  # a stop is coming after epoch 2: save from then on
    train_pack(specs, checkpoint_dir=tmp_path / "c", checkpoint_every=3600,
               save_now=lambda: next(asked))
    assert saved == [2, 3]


@pytest.mark.parametrize("change,message", [
    (dict(model="resnet20"), r"pack members must share model, but got model='lenet5' \(member 0\) "
                             r"and model='resnet20' \(member 1\)"),
    (dict(batch_size=32), r"must share batch_size, but got batch_size=16 \(member 0\) and "
                          r"batch_size=32 \(member 1\)"),
    (dict(epochs=4), "must share epochs"),
    (dict(milestones=[2]), "must share milestones"),
    (dict(measure_start=True), r"pack members must not use measure_start \(train\(\) runs those\), "
                               r"but got measure_start=True \(member 1\)"),
    (dict(switch_ste="relu", switch_ste_at=2), "must not use switch_ste"),
])
def test_specs_that_cannot_share_a_pack_are_refused_up_front(change, message):
    specs = [RunSpec(**LENET), RunSpec(**dict(LENET, **change))]
    with pytest.raises(PackError, match=message) as info:
        train_pack(specs)
    assert "\n" not in str(info.value)
    with pytest.raises(PackError, match=r"specs must hold at least one RunSpec, but got specs=\[\]"):
        train_pack([])


def test_pack_key_ignores_member_fields_and_resolves_defaults():
    a = RunSpec(**LENET)
    assert pack_key(a) == pack_key(RunSpec(**dict(LENET, seed=5, lr=0.3, momentum=0.5,
                                                  weight_decay=0.0, gamma=0.5, alpha_scale=2.0)))
    assert pack_key(RunSpec(model="lenet5")) == pack_key(RunSpec(model="lenet5", epochs=50))
    assert pack_key(a) != pack_key(RunSpec(**dict(LENET, limit=300)))


# -- the fused mode (CUDA's default), forced here on CPU ------------------------------------

def test_fused_float_pack_tracks_separate_runs(monkeypatch):
    # Without quantizers (float) less amplifies rounding (ReLU and max-pool kinks still do, over
    # 50 steps of batch 16). Measured here: train_loss within 1.1e-3 relative, grad_norm within
    # 4.1e-4, val_acc within 1 of the 360 examples; bounds 5e-3, 2e-3 and 4 examples. (With
    # quantizers a 1-ulp difference can move an input across a bin edge, and the runs then part
    # like two seeds: so quantized fused packs are compared step-wise, below.) The third member
    # diverges mid-epoch and is frozen by masks while the others go on.
    monkeypatch.setattr(pack_mod, "default_fused", lambda device: True)
    specs = _specs(dict(LENET, bits="float"),
                   [LENET_MEMBERS[0], dict(seed=2, lr=0.02, gamma=0.5), LENET_DIVERGES])
    results = train_pack(specs)
    for spec, got in zip(specs, results):
        want = separate(spec)
        assert (got.status, got.epochs_run) == (want.status, want.epochs_run)
        if got.status == "diverged":
            continue
        for g, w in zip(got.history, want.history):
            assert g["train_loss"] == pytest.approx(w["train_loss"], rel=5e-3)
            assert g["grad_norm"] == pytest.approx(w["grad_norm"], rel=2e-3)
            assert abs(g["val_acc"] - w["val_acc"]) * 360 <= 4 + 1e-9  # 360 digits to validate
    assert results[2].status == "diverged"


def test_fused_quantized_steps_match_train_step():
    # Three fused steps of three members (different alpha: the a * sigma_1(x / a) path) against
    # train_step on copies, same batches. Measured over three draws: loss within 4.8e-7,
    # grad norm 9.5e-7, weights 4.5e-7; bounds 1e-5 (10-20x), far below what one flipped bin
    # would move (a whole level, ~0.5 of one activation).
    torch.manual_seed(0)
    models, scales = [], (1.0, 1.3, 0.7)
    for seed, scale in enumerate(scales):
        torch.manual_seed(seed)
        models.append(create_model("lenet5", bits=2, alpha_scale=scale))
    copies = [copy.deepcopy(m) for m in models]
    lrs, moms, wds = [0.05, 0.1, 0.02], [0.9, 0.8, 0.0], [1e-4, 5e-4, 0.0]
    packed = PackedModel(models, fused=True, device="cpu")
    opt = StackedSGD(packed.params, lrs, moms, wds)
    opts = [torch.optim.SGD(m.parameters(), lr=lr, momentum=mo, weight_decay=wd)
            for m, lr, mo, wd in zip(copies, lrs, moms, wds)]
    x, y = torch.randn(3, 16, 1, 28, 28), torch.randint(0, 10, (3, 16))
    for _ in range(3):
        loss, correct, gnorm = pack_step(packed, opt, x, y)
        for k, (m, o) in enumerate(zip(copies, opts)):
            l_k, c_k, g_k = train_step(m, o, x[k], y[k])
            assert abs(loss[k] - l_k) < 1e-5 and abs(gnorm[k] - g_k) < 1e-5 and correct[k] == c_k
    for k, m in enumerate(copies):
        state = packed.member_state(k)
        assert all((state[n] - p).abs().max() < 1e-5 for n, p in m.state_dict().items()
                   if p.is_floating_point())


# -- the GPU figures script -------------------------------------------------------------------

def test_bench_pack_runs_on_cpu_with_pytorch_alone():
    # a bare machine simulated: the packages a PyTorch-only box lacks cannot be imported
    code = (
        "import sys, importlib.abc, torch\n"
        "torch.set_num_threads(1)\n"
        "BLOCK = {'ray', 'mlflow', 'optuna', 'pandas', 'sklearn', 'yaml', 'scipy'}\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in BLOCK: raise ImportError(f'no module named {name!r}')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import stetune.bench_pack as b\n"
        "print('LOADED', sorted(m for m in BLOCK if m in sys.modules))\n"
        "b.main(['--device', 'cpu', '--ks', '1,2', '--models', 'lenet5', '--quick'])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "LOADED []" in out.stdout
    assert "torch " in out.stdout and "lenet5    sequential   2" in out.stdout
    assert "skipped: quantized/float ratio per STE" in out.stdout  # said, not silently dropped
