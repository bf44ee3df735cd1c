"""Training data readers on small data sets written here in each real layout."""
import json
import logging
import os
import pickle
import random

import cv2
import numpy as np
import pytest

from training.data.explanatory import ExplanatoryReasonSegDataset
from training.data.readers import build
from training.data.reason_seg import ReasonSegDataset, rasterize, read_reason_seg_split
from training.data.refer_seg import ReferSegDataset
from training.data.safe_pickle import UnsafePickleError, load_data_pickle
from training.data.sem_seg import SemSegDataset, remap_labels
from training.data.vqa import VqaDataset
from training.data_mix import MixedStream


def write_image(path, h=40, w=60, value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), value, np.uint8))


def reason_seg_folder(root, n=3):
    for i in range(n):
        write_image(root / f"{i}.jpg")
        shapes = [{"label": "target", "points": [[5, 5], [30, 5], [30, 20], [5, 20]]},
                  {"label": "ignore", "points": [[10, 8], [20, 8], [20, 15]]},
                  {"label": "flag", "points": [[0, 0], [59, 0], [59, 39]]}]
        (root / f"{i}.json").write_text(json.dumps({"text": [f"the thing {i}", "the box"], "is_sentence": False,
                                                    "shapes": shapes}))
    return root


def test_reason_seg_rasterises_like_the_reference(tmp_path):
    shapes = [{"label": "small ignore", "points": [[10, 8], [20, 8], [20, 15]]},
              {"label": "target", "points": [[5, 5], [30, 5], [30, 20], [5, 20]]},
              {"label": "FLAG", "points": [[0, 0], [59, 0], [59, 39]]}]
    mask = rasterize(shapes, 40, 60)
    # The larger polygon is drawn first, the smaller "ignore" one over it; "flag" is skipped.
    assert set(np.unique(mask)) == {0, 1, 255}
    assert mask[9, 17] == 255 and mask[18, 28] == 1 and mask[35, 50] == 0
    assert mask[5, 5] == 1 and mask[20, 30] == 1  # polylines include the border pixels


def test_reason_seg_samples_and_split(tmp_path):
    ds = ReasonSegDataset(reason_seg_folder(tmp_path / "train"))
    s = ds.sample(random.Random(0))
    assert len(s.conversations) == len(s.masks) == 2  # both queries of the image, each its own conversation
    for (question, answer), mask in zip((c[0] for c in s.conversations), s.masks):
        assert question.startswith("<image>\n") and "[SEG]" in answer
        assert set(np.unique(mask)) <= {0, 1}  # training uses mask == 1
    items = read_reason_seg_split(tmp_path / "train")
    assert len(items) == 3 and items[0].query == "the thing 0" and 255 in items[0].gt


def test_bad_files_are_skipped_and_counted(tmp_path, caplog):
    root = reason_seg_folder(tmp_path / "train", n=2)
    (root / "broken.json").write_text("{not json")
    write_image(root / "broken.jpg")
    (root / "orphan.json").write_text(json.dumps({"text": ["x"], "is_sentence": False, "shapes": []}))
    write_image(root / "outside.jpg")
    (root / "outside.json").write_text(json.dumps({"text": ["x"], "is_sentence": False,
                                                   "shapes": [{"label": "t", "points": [[0, 0], [500, 0], [0, 9]]}]}))
    with caplog.at_level(logging.WARNING):
        ds = ReasonSegDataset(root)
        for seed in range(20):
            ds.sample(random.Random(seed))
    assert len(ds.records) == 3  # 0, 1 and outside (its polygon fails only when drawn)
    assert ds.skipped["BadSample"] >= 2  # broken.json + orphan.json at scan, outside.json when sampled
    assert "broken.json" in caplog.text and "orphan.json" in caplog.text and "outside" in caplog.text


class Boom:
    def __reduce__(self):
        return (os.system, ("touch /tmp/lisa_pickle_pwned",))


def test_refer_pickles_cannot_run_code(tmp_path):
    evil = tmp_path / "refs(unc).p"
    evil.write_bytes(pickle.dumps([Boom()]))
    if os.path.exists("/tmp/lisa_pickle_pwned"):
        os.remove("/tmp/lisa_pickle_pwned")
    with pytest.raises(UnsafePickleError, match="refs\\(unc\\).p.*posix.system|os.system"):
        load_data_pickle(evil)
    assert not os.path.exists("/tmp/lisa_pickle_pwned")


def refer_folder(tmp_path):
    root = tmp_path / "refer_seg"
    (root / "refcoco").mkdir(parents=True)
    write_image(root / "images" / "mscoco" / "images" / "train2014" / "COCO_1.jpg", 40, 60)
    refs = [{"ref_id": 1, "ann_id": 10, "image_id": 1, "split": "train", "sentences": [{"sent": "Left Box"}]},
            {"ref_id": 2, "ann_id": 11, "image_id": 1, "split": "train", "sentences": [{"sent": "right blob "}]},
            {"ref_id": 3, "ann_id": 11, "image_id": 1, "split": "val", "sentences": [{"sent": "not train"}]}]
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    rle = {"size": [40, 60], "counts": [40 * 40, 40 * 10, 40 * 10]}  # uncompressed RLE, column-major
    instances = {"images": [{"id": 1, "file_name": "COCO_1.jpg", "height": 40, "width": 60}],
                 "annotations": [{"id": 10, "image_id": 1, "segmentation": [[2, 2, 20, 2, 20, 12, 2, 12]]},
                                 {"id": 11, "image_id": 1, "segmentation": rle}],
                 "categories": []}
    (root / "refcoco" / "instances.json").write_text(json.dumps(instances))
    return root


def test_refer_masks_from_polygons_and_rle(tmp_path):
    root = refer_folder(tmp_path)
    ds = ReferSegDataset(root, "refcoco", root / "images" / "mscoco" / "images" / "train2014")
    s = ds.sample(random.Random(0))
    by_question = {c[0][0]: m for c, m in zip(s.conversations, s.masks)}
    assert len(by_question) == 2  # the val reference is not used
    left = next(m for q, m in by_question.items() if "left box" in q)  # lower-cased, as the reference
    right = next(m for q, m in by_question.items() if "right blob" in q)
    assert left[5, 10] == 1 and left[30, 50] == 0
    assert right[:, 40:50].all() and not right[:, :40].any() and not right[:, 50:].any()
    assert isinstance(build("refer_seg", root).sample(random.Random(1)).masks[0], np.ndarray)


def test_ade20k_label_shift_and_at_most_three_classes(tmp_path):
    root = tmp_path / "ade20k"
    write_image(root / "images" / "training" / "a.jpg", 20, 20)
    label = np.zeros((20, 20), np.uint8)
    for k, cls in enumerate([1, 2, 3, 4, 5]):
        label[:, 4 * k: 4 * k + 4] = cls
    label[0] = 0  # unlabelled
    (root / "annotations" / "training").mkdir(parents=True)
    cv2.imwrite(str(root / "annotations" / "training" / "a.png"), label)
    (root / "classes.json").write_text(json.dumps(["wall", "Building", "sky", "floor", "tree"]))
    remapped = remap_labels(label, "ade20k", [])
    assert remapped[0, 0] == 255 and remapped[5, 0] == 0 and remapped[5, 19] == 4
    ds = SemSegDataset.ade20k(root, root / "classes.json")
    s = ds.sample(random.Random(0))
    assert len(s.masks) == 3
    for conv, mask in zip(s.conversations, s.masks):
        name = next(n for n in ["wall", "building", "sky", "floor", "tree"] if n in conv[0][0])
        k = ["wall", "building", "sky", "floor", "tree"].index(name)
        assert mask[5:, 4 * k: 4 * k + 4].all() and mask.sum() == 19 * 4


def test_vqa_turns_and_mixing(tmp_path):
    write_image(tmp_path / "coco" / "x.jpg")
    items = [{"id": "q1", "image": "x.jpg", "conversations": [
        {"from": "human", "value": "What is this?\n<image>"}, {"from": "gpt", "value": "A grey square."},
        {"from": "human", "value": "Why?"}, {"from": "gpt", "value": "It is uniform."}]},
        {"id": "bad", "image": "x.jpg", "conversations": [{"from": "gpt", "value": "no question"}]}]
    (tmp_path / "llava.json").write_text(json.dumps(items))
    vqa = VqaDataset(tmp_path / "llava.json", tmp_path / "coco")
    s = next(vqa.sample(random.Random(seed)) for seed in range(5))
    assert s.masks == [] and s.conversations == [[("<image>\nWhat is this?", "A grey square."),
                                                  ("Why?", "It is uniform.")]]
    reason = ReasonSegDataset(reason_seg_folder(tmp_path / "rs"))
    stream = MixedStream([vqa, reason], [3, 1], seed=0)
    a = stream.batch(5, 0, 0, 8)
    assert [x.name for x in a] == [x.name for x in stream.batch(5, 0, 0, 8)]  # deterministic: exact resume
    sources = [x.source for step in range(20) for x in stream.batch(step, 0, 0, 8)]
    assert 0.6 < sources.count("vqa") / len(sources) < 0.9


def test_explanatory_answers(tmp_path):
    root = reason_seg_folder(tmp_path / "train", n=1)
    (tmp_path / "explanatory.json").write_text(json.dumps([{"image": "0.jpg", "query": "q",
                                                            "outputs": "Because it is there."}]))
    ds = ExplanatoryReasonSegDataset(root, tmp_path / "explanatory.json")
    samples = [ds.sample(random.Random(seed)) for seed in range(60)]
    text_only = [s for s in samples if not s.masks]
    explained = [s for s in samples if s.masks]
    assert 0 < len(text_only) < 20
    assert all(s.conversations[0][0][1] == "Because it is there." for s in text_only)
    assert all("explain" in s.conversations[0][0][0] or "explanation" in s.conversations[0][0][0]
               or "reason" in s.conversations[0][0][0] for s in explained)
    assert all(s.conversations[0][0][1].endswith("Because it is there.") and "[SEG]" in s.conversations[0][0][1]
               for s in explained)
