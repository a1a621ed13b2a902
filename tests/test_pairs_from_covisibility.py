from collections import Counter

from helpers_localization import assert_hloc_signature

from p2p_hloc import pairs_from_covisibility
from p2p_hloc.io import parse_pairs
from p2p_hloc.synthetic import View, look
from p2p_hloc.synthetic_layouts import reference_model, scene_points


def test_signature_is_hlocs():
    assert_hloc_signature(pairs_from_covisibility.main, "model, output, num_matched")


def test_most_covisible_first(tmp_path):
    """Five cameras turning from the left wall to the right one: each image's
    pairs are the images sharing most points with it, by decreasing count."""
    views = [
        View(f"db/{i}.jpg", 160, 120, 100.0, *look((0, 0, 2), yaw))
        for i, yaw in enumerate((-80, -40, 0, 40, 80))
    ]
    rec = reference_model(views, scene_points(views, step=8))
    model = tmp_path / "model"
    model.mkdir()
    rec.write(model)
    pairs = parse_pairs(pairs_from_covisibility.main(model, tmp_path / "p.txt", 2))
    shared = {}
    for point in rec.points3D.values():
        ids = {e.image_id for e in point.track.elements}
        for i in ids:
            shared.setdefault(i, Counter()).update(ids - {i})
    expected = []
    for i in sorted(rec.images):
        ranked = sorted(shared[i].items(), key=lambda kv: (-kv[1], kv[0]))[:2]
        expected += [(rec.images[i].name, rec.images[j].name) for j, _ in ranked]
    assert pairs == expected
    assert ("db/0.jpg", "db/1.jpg") in pairs and ("db/0.jpg", "db/4.jpg") not in pairs
