"""surgeon.recover: distillation back towards the dense model, checkpoints and resume, FSDP2."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import surgeon
from surgeon.recover import RecoverConfig, distill_loss, recover_run


def _mlp(widths=(64, 256, 256, 10)) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _digits():
    sk = pytest.importorskip("sklearn.datasets")
    d = sk.load_digits()
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(d.target), generator=g)
    x = torch.tensor(d.data, dtype=torch.float32)[order] / 16.0
    y = torch.tensor(d.target)[order]
    return x[:1347], y[:1347], x[1347:], y[1347:]


def _batches(x, y, size=64, seed=0):
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    return [(x[i], y[i]) for i in idx.split(size)]


@torch.no_grad()
def _accuracy(model, x, y) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


def test_digits_mlp_recovers_to_dense_accuracy():
    """The acceptance case: 64-256-256-10 on digits, cut to 0.15 of its FLOPs, recovered within
    0.02 of the dense test accuracy and better than before recovery."""
    xtr, ytr, xte, yte = _digits()
    dense = _mlp()
    opt = torch.optim.Adam(dense.parameters(), 1e-3)
    for epoch in range(30):
        for x, y in _batches(xtr, ytr, seed=epoch + 1):
            opt.zero_grad()
            F.cross_entropy(dense(x), y).backward()
            opt.step()
    dense_acc = _accuracy(dense, xte, yte)
    assert dense_acc > 0.9
    small = surgeon.shrink(dense, xtr[:8], target=0.15)
    flops = surgeon.verify.count_flops
    assert flops(small, xtr[:8]) / flops(dense, xtr[:8]) == pytest.approx(0.15, abs=0.01)
    before = _accuracy(small, xte, yte)
    evals = []
    out = surgeon.recover(small, dense, _batches(xtr, ytr), quiet=True,
                          eval_fn=lambda m: evals.append(_accuracy(m, xte, yte)) or evals[-1])
    after = _accuracy(out, xte, yte)
    assert out is small
    assert after >= dense_acc - 0.02, (before, after, dense_acc)
    assert after > before + 0.05
    assert len(evals) == 5 and evals[-1] == after  # eval_fn: every steps // 5, and at the end
    assert not any(p.requires_grad is False for p in dense.parameters())  # the teacher is left alone


def _toy(seed=0):
    torch.manual_seed(seed)
    teacher = _mlp((12, 48, 48, 5))
    small = surgeon.shrink(teacher, torch.randn(4, 12), target=0.5)
    g = torch.Generator().manual_seed(seed)
    data = [(torch.randn(8, 12, generator=g), torch.randint(0, 5, (8,), generator=g)) for _ in range(5)]
    return teacher, small, data


class _Stop(Exception):
    pass


def test_resume_replays_the_interrupted_run_exactly(tmp_path):
    teacher, small, data = _toy()
    fresh = _toy()[1]
    full = recover_run(small, teacher, data, steps=12, quiet=True)

    ckpt = tmp_path / "recover.pt"

    def interrupt(model):
        raise _Stop

    with pytest.raises(_Stop):  # eval at step 8 stops the run; the step-6 checkpoint is on disk
        recover_run(fresh, teacher, data, steps=12, quiet=True, checkpoint=ckpt, checkpoint_every=6,
                    eval_every=8, eval_fn=interrupt)
    state = torch.load(ckpt, weights_only=True)  # loads without unpickling code
    assert state["step"] == 6 and len(state["losses"]) == 6
    assert not [p for p in tmp_path.iterdir() if p.name != "recover.pt"]  # no temporary left behind
    resumed = recover_run(fresh, teacher, data, steps=12, quiet=True, checkpoint=ckpt, checkpoint_every=6)
    assert resumed.resumed_from == 6
    assert resumed.losses == pytest.approx(full.losses, rel=1e-5)
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="steps=12"):
        recover_run(_toy()[1], teacher, data, steps=20, quiet=True, checkpoint=ckpt)


def test_labels_mix_the_users_loss_and_hidden_states_distill_by_mse():
    teacher, small, data = _toy()
    called = []

    def loss_fn(out, y):
        called.append(1)
        return F.cross_entropy(out, y)

    recover_run(small, teacher, data, steps=3, quiet=True, loss_fn=loss_fn)
    assert len(called) == 3
    recover_run(small, teacher, [x for x, _ in data], steps=3, quiet=True, loss_fn=None)  # inputs only: KL alone
    recover_run(small, teacher, data, steps=2, quiet=True, alpha=1.0, loss_fn=loss_fn)
    assert len(called) == 3  # alpha=1: distillation only

    class Enc(nn.Module):
        def __init__(self, hidden):
            super().__init__()
            self.inner = nn.Linear(12, hidden)
            self.out = nn.Linear(hidden, 6)

        def forward(self, x):
            return {"last_hidden_state": self.out(torch.relu(self.inner(x)))}

    torch.manual_seed(1)
    enc_t, enc_s = Enc(32), Enc(8)
    xs = [torch.randn(16, 12) for _ in range(4)]
    cos = lambda: float(F.cosine_similarity(enc_s(xs[0])["last_hidden_state"],  # noqa: E731
                                            enc_t(xs[0])["last_hidden_state"]).mean().detach())
    before = cos()
    r = recover_run(enc_s, enc_t, xs, steps=150, lr=1e-2, quiet=True)
    assert r.losses[-1] < 0.2 * r.losses[0] and cos() > before


def test_distill_loss_and_options():
    s, t = torch.randn(6, 10), torch.randn(6, 10)
    assert float(distill_loss(t, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(distill_loss(s, t, "kl", 1.0)) == pytest.approx(
        float(F.kl_div(F.log_softmax(s, -1), F.softmax(t, -1), reduction="batchmean")), rel=1e-5)
    assert float(distill_loss(t, t, "cosine")) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(surgeon.SurgeonError, match="does not match"):
        distill_loss(s, t[:, :4])
    with pytest.raises(TypeError, match="unknown option"):
        RecoverConfig.of(stpes=3)
    with pytest.raises(ValueError, match="distill"):
        RecoverConfig.of(distill="l1")
    teacher, small, data = _toy()
    with pytest.raises(surgeon.SurgeonError, match="steps=N"):
        recover_run(small, teacher, (b for b in data), quiet=True)
    assert recover_run(small, teacher, data, epochs=2, quiet=True).steps == 10


# -- FSDP2 on two CPU processes (gloo) ----------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fsdp_worker(rank: int, world: int, port: int, out: str, ckpt: str) -> None:
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        teacher, small, data = _toy()
        r = recover_run(small, teacher, data, steps=8, quiet=True)
        sharded = all(isinstance(p, DTensor) for p in r.model.parameters())
        teacher, small, data = _toy()  # resume the one-process checkpoint of step 4 on two processes
        resumed = recover_run(small, teacher, data, steps=8, quiet=True, checkpoint=ckpt, checkpoint_every=4)
        if rank == 0:
            with open(out, "w") as f:
                json.dump({"losses": r.losses, "sharded": sharded, "resumed": resumed.losses,
                           "resumed_from": resumed.resumed_from}, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_fsdp2_two_processes_follow_the_one_process_trajectory(tmp_path):
    """Two CPU processes (gloo) under FSDP2 give the loss trajectory of one process on the whole
    batches, and resume a one-process checkpoint, writing a full state dict that matches."""
    mp = pytest.importorskip("torch.multiprocessing")
    teacher, small, data = _toy()
    one = recover_run(small, teacher, data, steps=8, quiet=True)
    ckpt = tmp_path / "ck.pt"

    def stop(model):
        raise _Stop

    with pytest.raises(_Stop):
        recover_run(_toy()[1], teacher, data, steps=8, quiet=True, checkpoint=ckpt, checkpoint_every=4,
                    eval_every=5, eval_fn=stop)
    out = tmp_path / "rank0.json"
    mp.spawn(_fsdp_worker, args=(2, _free_port(), str(out), str(ckpt)), nprocs=2, join=True)
    got = json.loads(out.read_text())
    assert got["sharded"]
    assert got["losses"] == pytest.approx(one.losses, rel=1e-4, abs=1e-6)
    assert got["losses"][-1] < got["losses"][0]
    assert got["resumed_from"] == 4 and got["resumed"] == pytest.approx(one.losses, rel=1e-4, abs=1e-6)
    state = torch.load(ckpt, weights_only=True)  # written by rank 0 from the sharded model, in full
    assert state["step"] == 8
    for k, v in one.model.state_dict().items():
        torch.testing.assert_close(state["model"][k], v, rtol=1e-4, atol=1e-5)

def test_cli_recover_trains_saves_and_resumes(tmp_path, capsys):
    from surgeon import checkpoint
    from surgeon.cli import main

    (tmp_path / "net.py").write_text(
        "import torch\n"
        "def build():\n"
        "    torch.manual_seed(3)\n"
        "    return torch.nn.Sequential(torch.nn.Linear(12, 48), torch.nn.ReLU(), torch.nn.Linear(48, 5))\n")
    spec = f"{tmp_path / 'net.py'}:build"
    small_pt, out, ckpt = tmp_path / "small.pt", tmp_path / "rec.pt", tmp_path / "ck.pt"
    assert main(["shrink", spec, "--input", "4,12", "--target", "0.5", "--out", str(small_pt), "--quiet"]) == 0
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, 12, generator=g), torch.randint(0, 5, (16,), generator=g)) for _ in range(4)]
    torch.save(data, tmp_path / "d.pt")
    capsys.readouterr()
    args = ["recover", str(small_pt), "--data", str(tmp_path / "d.pt"), "--out", str(out), "--steps", "20",
            "--eval-data", str(tmp_path / "d.pt"), "--checkpoint", str(ckpt), "--json", "--quiet"]
    assert main(args) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["steps"] == 20 and rep["loss_last"] < rep["loss_first"] and rep["resumed_from"] == 0
    model, _ = checkpoint.load(out)
    original, _ = checkpoint.load(small_pt)
    assert [p.shape for p in model.parameters()] == [p.shape for p in original.parameters()]
    assert not torch.equal(model[0].weight, original[0].weight)
    assert main(args) == 0  # the checkpoint says the run is done: nothing more to train
    assert json.loads(capsys.readouterr().out)["resumed_from"] == 20
    assert main(["recover", spec, "--data", str(tmp_path / "d.pt"), "--out", str(out), "--quiet"]) == 2


def test_feature_matching_compares_the_surviving_channels():
    from surgeon._recover_features import FeatureMatch

    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(16, 4)).eval()
    x = torch.randn(4, 3, 8, 8)
    plan = surgeon.plan(teacher, x, target=0.5, round_to=None)
    small = surgeon.apply(teacher, plan)
    assert small[0].out_channels < 16
    fm = FeatureMatch(small, teacher, ["0"], plan)
    with torch.no_grad():
        small(x), teacher(x)
    assert float(fm.loss()) == pytest.approx(0.0, abs=1e-10)  # the first conv's kept channels are the teacher's
    fm.close()
    fm = FeatureMatch(small, teacher, ["3"], plan)
    with torch.no_grad():
        small(x), teacher(x)
    assert float(fm.loss()) > 1e-4  # its input lost channels: a real difference to train away
    fm.close()
    with pytest.raises(surgeon.SurgeonError, match="which channels"):
        bad = FeatureMatch(small, teacher, ["0"], None)
        with torch.no_grad():
            small(x), teacher(x)
        bad.loss()
    bad.close()
    data = [torch.randn(8, 3, 8, 8) for _ in range(4)]
    r = recover_run(small, teacher, data, steps=30, quiet=True, features=["3"], plan=plan, feature_weight=1.0)
    assert r.losses[-1] < r.losses[0]
    assert not small[3]._forward_hooks and not teacher[3]._forward_hooks  # hooks removed afterwards


def test_cosine_feature_matching_ignores_scale_and_trains_hidden_states():
    from surgeon._recover_features import FeatureMatch

    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 8)).eval()
    student = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 8))
    student.load_state_dict(teacher.state_dict())
    with torch.no_grad():
        student[0].weight.mul_(3.0), student[0].bias.mul_(3.0)  # the same directions, three times longer
    x = torch.randn(5, 7, 8)
    got = {}
    for kind in ("cosine", "mse"):
        fm = FeatureMatch(student, teacher, ["0"], kind=kind)
        with torch.no_grad():
            student(x), teacher(x)
        got[kind] = float(fm.loss())
        fm.close()
    assert got["cosine"] == pytest.approx(0.0, abs=1e-6) and got["mse"] > 1.0
    with pytest.raises(ValueError, match="feature_loss"):
        RecoverConfig.of(feature_loss="l1")
    torch.manual_seed(1)
    student = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 8))
    data = [torch.randn(4, 7, 8) for _ in range(4)]
    fm = FeatureMatch(student, teacher, ["1"], kind="cosine")
    with torch.no_grad():
        student(x), teacher(x)
    before = float(fm.loss())
    fm.close()
    r = recover_run(student, teacher, data, steps=60, lr=1e-2, quiet=True, features=["1"], feature_loss="cosine")
    fm = FeatureMatch(student, teacher, ["1"], kind="cosine")
    with torch.no_grad():
        student(x), teacher(x)
    assert float(fm.loss()) < 0.5 * before and r.losses[-1] < r.losses[0]
    fm.close()


def test_dropout_is_off_while_the_student_trains_and_restored_after():
    """The teacher runs without dropout, so a student that equals it has zero distillation loss,
    which student dropout would break; ``dropout=True`` keeps it on."""
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3))
    data = [torch.randn(16, 8) for _ in range(3)]
    seen = []
    for dropout in (False, True):
        student = surgeon.shrink(teacher, data[0], target=0.999)  # a dense copy
        hook = student[2].register_forward_pre_hook(lambda m, a: seen.append((dropout, m.p)))
        run = recover_run(student, teacher, data, steps=3, lr=1e-9, distill="mse", quiet=True, dropout=dropout)
        hook.remove()
        assert student[2].p == 0.5 and student.training and teacher.training  # rates and flags restored
        if dropout:
            assert run.losses[0] > 1e-2
        else:
            assert max(run.losses) < 1e-10
    assert {p for d, p in seen if not d} == {0.0} and {p for d, p in seen if d} == {0.5}
