"""Household scenes (lisa_ros.scenes.household) and the demo model's data (training.household): exact geometry,
instance masks, questions with held-out phrasings, and absent things answered in words."""
import json
import random

import cv2
import numpy as np
import pytest

from lisa_ros.geometry import targets_3d
from lisa_ros.scenes.household import KINDS, generate_scene
from lisa_ros.scenes.scannet import ScanNetScene
from training.data.reason_seg import ReasonSegDataset, rasterize
from training.household import EXPLICIT, IMPLICIT, KIND_NAMES, make_sample, write_split


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return generate_scene(tmp_path_factory.mktemp("hh") / "scene", num_frames=1, seed=3, color_size=(320, 240),
                          depth_size=(320, 240))


def test_every_kind_is_placed_and_the_mug_stands_on_the_table(scene):
    truth = json.loads((scene / "ground_truth.json").read_text())
    kinds = {o["kind"]: o for o in truth["objects"]}
    assert set(kinds) == set(KINDS)
    table_top = max(p["hi"][2] for p in kinds["table"]["parts"])
    assert min(p["lo"][2] for p in kinds["mug"]["parts"]) == pytest.approx(table_top)


def test_depth_and_instances_agree_with_the_true_centroids(scene):
    """Each object's true instance mask, taken to 3D through the depth image (the depth camera has ScanNet's other
    calibration, so the mask is mapped across, as the node does), gives its recorded visible-surface centroid to
    millimetres: the depth images, masks and ground truth describe one geometry."""
    s = ScanNetScene.open(scene)
    truth = json.loads((scene / "ground_truth.json").read_text())["frames"][0]
    ids = cv2.imread(str(scene / truth["instance"]), cv2.IMREAD_UNCHANGED)
    masks = [ids == obj["id"] for obj in truth["objects"]]
    for obj, (target, _) in zip(truth["objects"], targets_3d(masks, s.read_depth(0), s.depth_intrinsics,
                                                             s.color_intrinsics)):
        assert target.valid and np.abs(target.centroid - obj["visible_centroid_camera"]).max() < 0.005, obj["kind"]


def test_questions_hold_whole_phrasings_out():
    """Held-out phrasings are sentences training never saw, made of words it did see (for this kind)."""
    for kind in KIND_NAMES:
        train, held_out = IMPLICIT[kind]
        assert not set(train) & set(held_out) and len(train) >= 8 and len(held_out) >= 3
        vocabulary = {w for q in train for w in q.lower().split()}
        assert all(set(q.lower().split()) <= vocabulary for q in held_out), kind
        assert EXPLICIT[kind][0].startswith("the ")


@pytest.mark.parametrize("mode", ["train", "val_heldout", "val_absent"])
def test_samples_target_the_right_pixels(mode):
    rng = np.random.default_rng(11)
    for _ in range(4):
        rgb, meta = make_sample(rng, (160, 120), mode)
        kinds_seen = {o["kind"] for o in meta["objects"]}
        assert meta["visible_kind_indices"] == sorted(KIND_NAMES.index(k) for k in kinds_seen)  # presence probe
        if not meta["shapes"]:  # an absent thing: not in the scene at all, asked about in words
            assert mode != "val_heldout" and meta["kind"] not in kinds_seen
            continue
        assert meta["kind"] in kinds_seen and meta["query_kind_index"] == KIND_NAMES.index(meta["kind"])
        pool = IMPLICIT[meta["kind"]][1] if mode == "val_heldout" else IMPLICIT[meta["kind"]][0] + EXPLICIT[meta["kind"]]
        assert set(meta["text"]) == set(pool)
        target = rasterize(meta["shapes"], 120, 160) == 1
        assert target.sum() >= 0.012 * target.size * 0.8  # visible enough to be asked about
        others = [rasterize([{"label": "o", "points": p} for p in o["polygons"]], 120, 160) == 1
                  for o in meta["objects"] if o["kind"] != meta["kind"]]
        assert all((target & o).sum() <= 0.1 * target.sum() for o in others)  # its own pixels, not a neighbour's


def test_absent_things_are_answered_in_words(tmp_path):
    write_split(tmp_path, 6, seed=5, mode="val_absent", size=(80, 60))
    data = ReasonSegDataset(tmp_path, queries_per_image=1, answers=["Sure, it is [SEG]."],
                            presence_key="visible_kind_indices")
    sample = data.sample(random.Random(0))
    ((question, answer),) = sample.conversations[0]
    assert "[SEG]" not in answer and answer and sample.masks == [] and question.startswith("<image>")
    meta = json.loads((tmp_path / f"{sample.name}.json").read_text())  # the kinds in view, for the presence probe
    assert sample.presence_targets == meta["visible_kind_indices"] != []
    assert meta["query_kind_index"] not in sample.presence_targets


def test_balanced_kinds_are_mostly_asked_about_when_visible():
    """With balanced kinds every kind is asked about mostly when it is visible, the rarely visible mug too; the
    uniform draw (the lisa-demo shipped before 2026-12-06) made most mug questions "not here", and that model
    answered "Sorry" to all of them."""
    def asked(balanced: bool) -> dict[str, list[int]]:
        rng, count = np.random.default_rng(2), {kind: [0, 0] for kind in KIND_NAMES}  # kind -> [visible, absent]
        for _ in range(300):
            _, meta = make_sample(rng, (160, 120), "train", balanced)
            count[meta["kind"]][not meta["shapes"]] += 1
        return count

    for kind, (visible, absent) in asked(True).items():
        assert visible >= 4 and absent / (visible + absent) < 0.5, (kind, visible, absent)
    visible, absent = asked(False)["mug"]
    assert absent > 2 * visible
