"""What the method is for, on a small synthetic set (64 px, 64 training images, in-process): GAIN's attention
mining does what it claims on held-out images, far beyond the Grad-CAM baseline trained the same way, and SEC
trained on the GAIN seeds segments better, without its CRF, than the seeds it learned from and than the
trivial answer (every pixel background).

The measures are chosen so that a broken method fails and an unlucky seed does not. GAIN's own measure,
L_am's score s^c(I*) (sigmoid of the class's logit on the image with its attention erased, Eq. 3-5, computed
here, not by GAIN.forward), on the val images, for both methods trained the same way (alpha the only
difference). Measured with this configuration on the built-in set, GAIN / Grad-CAM: seeds 0, 1, 2: 0.080 /
0.227, 0.083 / 0.246, 0.076 / 0.181 (ratio 0.350, 0.335, 0.419). Planted bugs, measured on the earlier
built-in set at 48 px and not re-measured on this one: L_am on the wrong class ratio 0.51-0.71, erasing
1 - T(A) instead of T(A) 0.74-0.78, alpha ignored in the GAIN step 1.0. SEC without CRF vs its seeds' mIoU vs
all background on the training images: 0.154 / 0.043 / 0.110, 0.129 / 0.054 / 0.110, 0.145 / 0.063 / 0.110
(SEC's lead over the trivial answer 0.044, 0.019, 0.035; a net that predicts only background scores exactly
the trivial answer and fails). Val mAP, Grad-CAM / GAIN: 0.442 / 0.468, 0.352 / 0.440, 0.566 / 0.475 (chance,
the mean class frequency, 0.229). The context-bias test of Table 4 separates the methods only after the full
training (reports/study), and the attention mIoU difference is within seed noise here, so neither is
asserted. About 40 s of CPU time."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from gain.cam.attention import attention_maps
from gain.cam.train import train_gain
from gain.data.dataset import VOCDataset, synthetic_dataset_index
from gain.data.synthetic import SyntheticConfig, generate
from gain.data.transforms import eval_preset
from gain.data.voc import voc_palette
from gain.evaluation.metrics import ConfusionMatrix
from gain.runtime.device import CPU, seed_everything
from gain.runtime.io import save_palette_png
from gain.runtime.loaders import eval_loader
from gain.runtime.params import load_params
from gain.runtime.stage import save_model
from gain.runtime.tracking import NullRun
from gain.sec.evaluate import predict
from gain.sec.train import train_sec
from gain.seeds.extract import image_cues

pytestmark = pytest.mark.e2e
SHIPPED = load_params(Path(__file__).resolve().parents[2] / "params.yaml")
SEED = 0
SIZE = 64
DATA = replace(SHIPPED.data.synthetic, image_size=SIZE, n_train=64, n_val=16, n_bias_eval=1)
# sigma 0.5: the soft-mask threshold the margins below were measured with (params.yaml ships 0.7).
GAIN = replace(SHIPPED.gain, input_size=SIZE, epochs=8, warmup_epochs=4, batch_size=8, sigma=0.5)
SEC = replace(SHIPPED.sec, input_size=SIZE, iterations=120, lr_step=1000, eval_every=120)
# GAIN's masked score must be below this fraction of Grad-CAM's (real code: at most 0.42 over seeds 0-2;
# each planted bug at least 0.51 where measured: see the docstring).
MASKED_RATIO = 0.45
# SEC must beat both its seeds and the all-background answer by this much (measured: at least 0.019).
SEC_MARGIN = 0.01
# Each classifier's val mAP must beat chance by this much (measured: at least 0.123).
MAP_MARGIN = 0.1


def masked_score(classifier, index) -> float:
    """Mean over the val (image, class) pairs of sigmoid(s^c(I*)), I* = I - T(A^c) I (Eq. 3-4 written out here,
    not GAIN.forward's, so a wrong erasing in the model cannot hide from its own measure)."""
    classifier.eval()
    scores = []
    for batch in eval_loader(VOCDataset(index, index.splits["val"], eval_preset(SIZE)), 32):
        x = batch["image"]
        attn, pair_image, pair_class = attention_maps(classifier, x, batch["label"])
        t = torch.sigmoid(GAIN.omega * (attn - GAIN.sigma))[:, None]  # (P, 1, H, W)
        with torch.no_grad():
            logits = classifier(x[pair_image] - t * x[pair_image])  # erased pixels -> 0, the mean colour
        scores.append(torch.sigmoid(logits[torch.arange(len(pair_class)), pair_class]))
    return float(torch.cat(scores).mean())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quality")
    generate(tmp / "VOC2012", SyntheticConfig(**asdict(DATA), seed=SHIPPED.seed), progress=False)
    index = synthetic_dataset_index(tmp / "VOC2012")
    knobs = replace(SHIPPED.runtime, vis_images=0, crf_workers=0)
    out = {"index": index, "tmp": tmp, "knobs": knobs}
    for name, alpha in (("gradcam", 0.0), ("gain", 1.0)):
        seed_everything(SEED, True)
        result, model = train_gain(
            replace(GAIN, alpha=alpha),
            index,
            CPU,
            NullRun(),
            seed=SEED,
            knobs=knobs,
            ckpt_dir=tmp / name,
            fingerprint=name,
        )
        save_model(tmp / name / "model.pt", result)
        out[name] = {
            "model": model,
            "map": result.history[-1]["map"],
            "masked": masked_score(model.classifier, index),
        }
        print(f"{name}: val mAP {out[name]['map']:.3f}, val masked score {out[name]['masked']:.3f}")
    return out


def test_classifiers_reach_map_well_above_chance(trained):
    index = trained["index"]
    labels = np.stack([index.label_vector(i) for i in index.splits["val"]])
    chance = labels.mean(axis=0).mean()  # the AP of an uninformed ranking is the class frequency
    for name in ("gradcam", "gain"):
        assert trained[name]["map"] > chance + MAP_MARGIN, (name, trained[name]["map"], chance)


def test_gain_attention_mining_erases_the_evidence_that_gradcam_leaves(trained):
    """Erasing GAIN's attention removes the class far more than erasing Grad-CAM's (held-out images)."""
    gain, gradcam = trained["gain"]["masked"], trained["gradcam"]["masked"]
    assert gain < MASKED_RATIO * gradcam, (gain, gradcam, gain / gradcam)


def test_sec_without_crf_segments_better_than_its_own_seeds(trained):
    """SEC (seed, expand, constrain) trained on the GAIN seeds of the training images, scored on those images
    without the CRF, against the seeds themselves (unlabeled pixels count as misses): the network must fill
    in what the sparse seeds leave out. A network that only fits the seeds, or predicts one class, loses."""
    index, tmp = trained["index"], trained["tmp"]
    clf = trained["gain"]["model"].classifier.eval()
    ids = index.splits["weak_train"]
    ds = VOCDataset(index, ids, eval_preset(SIZE), keep_original=True)
    seeds_cm, background_cm = ConfusionMatrix(index.num_classes), ConfusionMatrix(index.num_classes)
    for item, cues, _, _ in image_cues(clf, ds, SHIPPED.seeds, CPU, batch_size=32):
        save_palette_png(tmp / "seeds" / f"{item['id']}.png", cues, voc_palette())
        seeds_cm.update(item["orig_mask"], cues)
        background_cm.update(item["orig_mask"], np.zeros_like(cues))  # the trivial answer: all background
    seed_everything(SEED, True)
    _, model = train_sec(
        SEC,
        index,
        CPU,
        NullRun(),
        seed=SEED,
        knobs=trained["knobs"],
        seeds_dir=tmp / "seeds",
        gain_model=tmp / "gain" / "model.pt",
        ckpt_dir=tmp / "sec",
        fingerprint="sec",
    )
    sec_cm = ConfusionMatrix(index.num_classes)
    for item, probs in predict(model, ds, CPU):
        sec_cm.update(item["orig_mask"], probs.argmax(0))
    sec, seeds, trivial = (cm.compute()["miou"] for cm in (sec_cm, seeds_cm, background_cm))
    print(f"SEC mIoU (no CRF) {sec:.3f}; its seeds' mIoU {seeds:.3f}; all background {trivial:.3f}")
    assert sec > max(seeds, trivial) + SEC_MARGIN, (sec, seeds, trivial)
