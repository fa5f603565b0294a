"""Real VOC end to end: the README's VOC command, as printed, through `dvc exp run` against a VOC-layout
tarball served on 127.0.0.1 (the real VOC images of the sample, with Annotations XML and split lists), scaled
down only by extra `-S` overrides appended to it, to reports/report.md."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
import torchvision
from mlflow.tracking import MlflowClient

from tests.pipeline_utils import REPO, dvc, env_for, make_repo, run
from tests.voc_fixture import TAR_NAME, build_tar, serve

pytestmark = pytest.mark.e2e

# Appended after the README's own -S flags (the last value of a key wins): tiny sizes and step counts,
# and the loopback mirror instead of the official host.
SCALE_DOWN = [
    "gain.epochs=1",
    "gain.input_size=64",
    "sec.input_size=64",
    "sec.batch_size=2",
    "sec.iterations=2",
    "sec.lr_step=1",
    "sec.eval_every=2",
]


def readme_voc_command() -> list[str]:
    """The shell words of the code block under the README's 'Real PASCAL VOC 2012' heading."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Real PASCAL VOC 2012") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return shlex.split(block.replace("\\\n", " "))


def stand_in_imagenet_weights(torch_home: Path) -> None:
    """A VGG16 state_dict (random values) where torchvision looks for the ImageNet file: this machine has no
    network, and the path under test is the loading, not the values."""
    url = torchvision.models.VGG16_Weights.IMAGENET1K_V1.url
    target = torch_home / "hub" / "checkpoints" / Path(url).name
    target.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.vgg16(weights=None).state_dict(), target)


def test_readme_voc_command_runs_to_the_report(tmp_path):
    words = readme_voc_command()
    assert words[:3] == [".venv/bin/dvc", "exp", "run"] and "gain.lr=1e-5" in words
    srv = tmp_path / "mirror"
    srv.mkdir()
    md5 = build_tar(srv / TAR_NAME)
    repo = make_repo(tmp_path / "repo")
    stand_in_imagenet_weights(tmp_path / "torch")
    env = env_for(repo) | {"TORCH_HOME": str(tmp_path / "torch")}
    with serve(srv) as url:
        urls = json.dumps([f"{url}/missing/{TAR_NAME}", f"{url}/{TAR_NAME}"])
        extra = [*SCALE_DOWN, f"data.voc_urls={urls}", f"data.voc_md5={md5}"]
        cmd = words + [w for kv in extra for w in ("-S", kv)]
        res = run(cmd, repo, env=env, timeout=900)
    assert "Running stage 'evaluate'" in res.stdout

    params = (repo / "params.yaml").read_text()
    assert re.search(r"^  lr: 1e-05$", params, re.M)  # as DVC wrote it: a YAML 1.1 string, read as a number
    index = json.loads((repo / "data/dataset/index.json").read_text())
    assert index["source"] == "voc" and len(index["classes"]) == 21
    assert sorted(index["splits"]["weak_train"]) == [
        "2011_000003",
        "2011_000006",
        "2011_000025",
        "2011_003066",
    ]
    assert index["splits"]["val"] == ["2007_000129"]
    official = json.loads((REPO / "tests/data/cls_labels_sample.json").read_text())
    for image_id, labels in index["labels"].items():  # from the XML the tarball carries
        assert labels == [i + 1 for i, v in enumerate(official[image_id]) if v], image_id
    assert (repo / "reports/data/samples.png").stat().st_size > 10_000
    report = (repo / "reports/report.md").read_text()
    assert "PASCAL VOC 2012 val" in report and "SYNTHETIC" not in report
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert metrics["dataset"] == "voc" and 0.0 <= metrics["sec_miou"] <= 1.0

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("gain-sec")
    (gain_run,) = client.search_runs([exp.experiment_id], filter_string="tags.stage = 'gain'")
    assert float(gain_run.data.params["gain.lr"]) == 1e-5
    assert (
        gain_run.data.params["gain.weights"] == "imagenet"
        and gain_run.data.params["gain.backbone"] == "vgg16"
    )
    assert gain_run.data.tags["dvc_exp_name"] == "voc-gain"
    # The experiment is recorded by DVC under its name.
    shown = dvc(repo, "exp", "show", "--json", env=env).stdout
    assert "voc-gain" in shown
