"""Bad input and interrupted runs: every failure is one line naming the file, key, value or step at fault,
with a non-zero exit, and nothing already written is lost or left half-written."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from gain.data.dataset import DatasetIndex, build_index
from gain.data.prepare import MAX_LISTED, validate
from gain.runtime.checkpoint import save_checkpoint
from gain.runtime.cli import EXIT_ERROR, run_stage
from gain.runtime.device import CPU
from gain.runtime.errors import InputError
from gain.runtime.io import write_json
from gain.runtime.loop import Loop, NonFiniteLoss, Schedule, fit
from gain.runtime.params import load_params
from gain.runtime.tracking import NullRun, stage_run
from tests.pipeline_utils import REPO, make_repo, python
from tests.voc_fixture import build_devkit

# --- the data stage checks every file before any training -------------------------------------------


@pytest.fixture
def devkit(tmp_path) -> Path:
    return build_devkit(tmp_path)


def index_of(root: Path) -> DatasetIndex:
    ids = sorted(p.stem for p in (root / "JPEGImages").glob("*.jpg"))
    return build_index(root, "voc", {"weak_train": ids[1:], "val": ids[:1]})


def test_a_sound_devkit_validates_to_a_digest_of_its_files(devkit):
    digest = validate(index_of(devkit))
    assert len(digest) == 64 and validate(index_of(devkit)) == digest
    xml = devkit / "Annotations" / "2011_000025.xml"
    xml.write_text(xml.read_text().replace("<depth>3</depth>", "<depth>3 </depth>"))
    assert validate(index_of(devkit)) != digest  # any byte of any listed file changes it


def test_truncated_jpeg_wrong_size_mask_and_missing_labels_are_all_listed(devkit):
    index = index_of(devkit)
    jpg = devkit / "JPEGImages" / "2011_000003.jpg"
    jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])
    mask = devkit / "SegmentationClass" / "2011_000006.png"
    from PIL import Image

    Image.open(mask).crop((0, 0, 100, 100)).save(mask)
    (devkit / "Annotations" / "2011_003066.xml").unlink()
    (devkit / "SegmentationClass" / "2011_003066.png").unlink()
    with pytest.raises(InputError) as e:
        validate(index)
    msg = str(e.value)
    assert msg.startswith(f"{devkit}: 3 of 5 images are unusable:")
    assert f"{jpg}: unreadable image" in msg
    assert f"{mask}: mask size (100, 100) differs from image size (500, 375)" in msg
    assert "2011_003066.xml: missing, and no mask either" in msg


def test_many_offenders_are_counted_after_the_first_twenty(devkit):
    src = devkit / "JPEGImages" / "2011_000003.jpg"
    ids = [f"2012_{i:06d}" for i in range(MAX_LISTED + 7)]
    for i in ids:
        (devkit / "JPEGImages" / f"{i}.jpg").write_bytes(src.read_bytes()[:500])
        shutil.copy(devkit / "Annotations" / "2011_000003.xml", devkit / "Annotations" / f"{i}.xml")
    index = build_index(devkit, "voc", {"weak_train": ids, "val": ["2007_000129"]})
    with pytest.raises(InputError) as e:
        validate(index)
    msg = str(e.value)
    assert f"{MAX_LISTED + 7} of {MAX_LISTED + 8} images are unusable" in msg
    assert msg.count("unreadable image") == MAX_LISTED and msg.endswith("... and 7 more")


@pytest.mark.e2e
def test_data_stage_stops_on_a_broken_devkit_and_keeps_the_old_index(tmp_path):
    devkit = build_devkit(tmp_path / "voc")
    repo = make_repo(tmp_path / "repo", {"data": {"source": "voc", "voc_root": str(devkit)}})
    python(repo, "-m", "stages.data")
    before = (repo / "data/dataset/index.json").read_bytes()
    (devkit / "JPEGImages" / "2011_000025.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    res = python(repo, "-m", "stages.data", check=False)
    assert res.returncode == EXIT_ERROR
    lines = res.stderr.strip().splitlines()
    assert lines[-2].startswith("error: ") and "1 of 5 images are unusable" in lines[-2]
    assert "2011_000025.jpg: unreadable image" in lines[-1] and "Traceback" not in res.stderr
    assert (repo / "data/dataset/index.json").read_bytes() == before


# --- one line per failure, traceback on request ------------------------------------------------------


def stage_exit(main, capsys, argv=(), env=None) -> tuple[int, str]:
    old = dict(os.environ)
    os.environ.update(env or {})
    try:
        with pytest.raises(SystemExit) as e:
            run_stage(main, list(argv))
    finally:
        os.environ.clear()
        os.environ.update(old)
    return e.value.code, capsys.readouterr().err


def test_stage_errors_print_their_message_only(capsys):
    def main():
        raise NonFiniteLoss("step 12: loss 'am' is nan; training stopped, the last good checkpoint is kept")

    code, err = stage_exit(main, capsys)
    assert code == EXIT_ERROR
    assert err == "error: step 12: loss 'am' is nan; training stopped, the last good checkpoint is kept\n"


def test_unexpected_errors_name_type_and_place_in_one_line(capsys):
    def main():
        from gain.runtime.io import read_json

        read_json(Path("/definitely/not/here.json"))

    code, err = stage_exit(main, capsys)
    assert code == EXIT_ERROR and err.count("\n") == 1
    assert err.startswith("error: /definitely/not/here.json: not found")

    def broken():
        {}["missing"]

    code, err = stage_exit(broken, capsys)
    assert code == EXIT_ERROR and err.count("\n") == 1
    assert err.startswith("error: KeyError: 'missing'") and "GAIN_DEBUG=1" in err


@pytest.mark.parametrize(("argv", "env"), [(["--debug"], {}), ([], {"GAIN_DEBUG": "1"})])
def test_debug_switch_shows_the_traceback(capsys, argv, env):
    def main():
        raise RuntimeError("boom")

    code, err = stage_exit(main, capsys, argv, env)
    assert code == EXIT_ERROR and "Traceback (most recent call last)" in err and "RuntimeError: boom" in err


def test_corrupt_dataset_index_says_to_rerun_the_data_stage(tmp_path):
    path = tmp_path / "index.json"
    path.write_text('{"root": "x", ')
    with pytest.raises(InputError, match=r"index.json: unreadable dataset index .*re-run the data stage"):
        DatasetIndex.load(path)


# --- checkpoints -----------------------------------------------------------------------------------------


class Toy(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"x": torch.full((2,), float(i))}


def toy_fit(ckpt: Path, total: int, step_fn=None):
    torch.manual_seed(0)
    model = nn.Linear(2, 1)

    def default(net, batch, step):
        return {"total": (net(batch["x"]) - 1).pow(2).mean()}

    loop = Loop(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
        dataset=Toy(),
        step_fn=step_fn or default,
        lr_at=lambda s: 0.01,
    )
    return model, fit(
        loop, Schedule(total_steps=total, batch_size=2, eval_every=100, ckpt_every=1, seed=0),
        rt=CPU, tracker=NullRun(), ckpt_dir=ckpt, fingerprint="f",
    )  # fmt: skip


def test_a_truncated_last_checkpoint_resumes_from_the_one_before(tmp_path, capsys):
    toy_fit(tmp_path / "full", 6)
    toy_fit(tmp_path / "cut", 4)
    last = tmp_path / "cut" / "last.pt"
    last.write_bytes(last.read_bytes()[:64])  # the disk filled up while it was written
    model, res = toy_fit(tmp_path / "cut", 6)
    out = capsys.readouterr().out
    # one line, one story: what was unreadable and which file training resumes from
    (line,) = [x for x in out.splitlines() if "last.pt" in x]
    assert line.startswith(f"{last}: unreadable checkpoint (")
    assert line.endswith(f"; resuming from {last}.prev at step 3/6")
    assert "delete it" not in out
    assert res.resumed_from == 3
    full, _ = toy_fit(tmp_path / "full", 6)
    assert torch.equal(model.weight, full.weight)


def test_weights_that_turn_nan_are_never_checkpointed(tmp_path):
    """A finite loss can still blow the weights up (an inf gradient): the checkpoint refuses them."""

    def step_fn(model, batch, step):
        loss = (model(batch["x"]) - 1).pow(2).mean()
        if step == 2:
            with torch.no_grad():
                model.weight[0, 0] = float("inf")
        return {"total": loss}

    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    loop = Loop(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), dataset=Toy(),
                step_fn=step_fn, lr_at=lambda s: 0.01)  # fmt: skip
    from gain.runtime.checkpoint import load_checkpoint

    with pytest.raises(
        NonFiniteLoss,
        match=r"step 3: the weights are no longer finite; .*last.pt: not written, model.weight holds",
    ):
        fit(loop, Schedule(total_steps=6, batch_size=2, eval_every=100, ckpt_every=1, seed=0),
            rt=CPU, tracker=NullRun(), ckpt_dir=tmp_path, fingerprint="f")  # fmt: skip
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 2


def test_reports_are_world_readable(tmp_path):
    old = os.umask(0o077)
    try:
        write_json(tmp_path / "m.json", {"a": float("nan"), "b": [1.5]})
        save_checkpoint(tmp_path / "m.pt", {"model": {}})
    finally:
        os.umask(old)
    for name in ("m.json", "m.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": None, "b": [1.5]}  # strict JSON


# --- an MLflow run whose process was killed ------------------------------------------------------------


@pytest.mark.e2e
def test_a_killed_stage_run_is_marked_killed_when_the_next_stage_starts(mlflow_uri, tmp_repo):
    script = textwrap.dedent(
        f"""
        import time
        from gain.runtime.params import load_params
        from gain.runtime.tracking import stage_run
        with stage_run("gain", load_params({str(REPO / "params.yaml")!r})) as run:
            print(run.run_id, flush=True)
            time.sleep(600)
        """
    )
    env = dict(os.environ, MLFLOW_TRACKING_URI=mlflow_uri, GAIN_PIPELINE_ID="p1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=tmp_repo, env=env, stdout=subprocess.PIPE, text=True
    )
    run_id = proc.stdout.readline().strip()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    assert client.get_run(run_id).info.status == "RUNNING"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(0.2)
    with stage_run("seeds", load_params(REPO / "params.yaml")):
        pass
    assert client.get_run(run_id).info.status == "KILLED"
