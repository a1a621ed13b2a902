"""Executors of match_pairs: local (DataLoader) and Ray actors, on a local Ray
instance with 2 CPUs. Ray results must equal local ones dataset by dataset."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Tuple

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from conftest import assert_same_h5
from test_match_pairs import write_pairs

from p2p_hloc.confs import confs
from p2p_hloc.executors import _Shards, cache_order, load_order, run_pairs
from p2p_hloc.io.raw import RawMatches
from p2p_hloc.match_pairs import main
from p2p_hloc.preprocess import ImageError

ray = pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[1]
SIFT = "matches-sift-r1600-n4096"
PAIRS = 13  # in the scene
DEADLINE = 30.0  # s: the killed run's image readers must be gone by then


def make_images(root: Path, n: int, size: Tuple[int, int], step: int) -> Path:
    """``n`` random homography warps of one photo in ``root/images``; the
    pairs file ``root/pairs.txt`` links images at most ``step`` apart."""
    w, h = size
    photo = cv2.resize(skimage.data.astronaut()[..., ::-1], (w, w))
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    names = [f"im{i:02d}.png" for i in range(n)]
    for name in names:
        H = np.eye(3)
        H[:2, :2] += rng.normal(0, 0.03, (2, 2))
        H[:2, 2] = rng.normal(0, 0.03 * w, 2)
        cv2.imwrite(str(root / "images" / name), cv2.warpPerspective(photo, H, size))
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 : i + 1 + step]]
    return write_pairs(root / "pairs.txt", pairs)


def assert_same_files(a: Path, b: Path, output: str, pairs: str = "pairs") -> None:
    """Features and matches files of two runs: every dataset equal."""
    for name in (f"feats_{output}.h5", f"{output}_{pairs}.h5"):
        assert_same_h5(a / name, b / name)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# python -m p2p_hloc.match_pairs ARGS, killed by SIGKILL (as by the OOM killer)
# right after its second raw pair is stored; it prints its children's pids first
KILLED_RUN = """
import os, runpy, signal, sys
from p2p_hloc.io.raw import RawMatches
write, written = RawMatches.write, []
def write_then_die(self, *args):
    write(self, *args)
    written.append(args)
    if len(written) == 2:
        tasks = os.listdir("/proc/self/task")
        kids = [open(f"/proc/self/task/{t}/children").read() for t in tasks]
        print(" ".join(kids), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
RawMatches.write = write_then_die
sys.argv[0] = "match_pairs"
runpy.run_module("p2p_hloc.match_pairs", run_name="__main__")
"""


def killed_run(root: Path, out: Path, *flags: str, env=None) -> List[int]:
    """SIFT on ``root``'s scene into ``out``, killed after two pairs; returns
    the pids of the children the run had then."""
    args = ["--conf", "sift", "--pairs", root / "pairs.txt"]
    args += ["--image_dir", root / "images", "--export_dir", out, *flags]
    log = out.parent / f"{out.name}.pids"  # not a pipe: orphans would hold it
    with open(log, "w") as stdout:
        res = subprocess.run(
            [sys.executable, "-c", KILLED_RUN, *map(str, args)],
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
            stdout=stdout,
            stderr=subprocess.DEVNULL,
        )
    assert res.returncode == -signal.SIGKILL, res.returncode
    assert len(list(out.glob("*.raw/*/*.npz"))) == 2
    return [int(pid) for pid in log.read_text().split()]


def sift_run(root: Path, out: Path, executor: str) -> None:
    """SIFT on ``root``'s scene into ``out``; Ray with 2 workers."""
    workers = 2 if executor == "ray" else None
    main(
        confs["sift"],
        root / "pairs.txt",
        root / "images",
        out,
        executor=executor,
        workers=workers,
    )


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance with 2 CPUs; yields its address."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 << 20)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """8 images of 480x360, 13 pairs, and their SIFT files by the local
    executor in ``root/local``."""
    root = tmp_path_factory.mktemp("scene")
    make_images(root, 8, size=(480, 360), step=2)
    sift_run(root, root / "local", "local")
    return root


def test_cache_order_loads_each_image_once_for_shared_db():
    """2 queries x 20 db images: in file order every db image is loaded once
    per query; in cache order every image is loaded once."""
    pairs = [(f"q{i}", f"db{j:02d}") for i in range(2) for j in range(20)]
    assert len(load_order(sorted(pairs), 4)) == 42
    order = cache_order(pairs, 4)
    assert sorted(order) == sorted(pairs)  # a permutation, orientation kept
    assert len(load_order(order, 4)) == 22
    assert order == cache_order(list(reversed(pairs)), 4)  # deterministic
    # a chain with no reuse at all keeps working
    chain = [(f"i{k}", f"i{k + 1}") for k in range(10)] + [("i3", "i3")]
    assert sorted(cache_order(chain, 2)) == sorted(chain)


def test_ray_shards_give_each_worker_a_stretch_of_the_cache_order():
    """Worker slot 0 takes its own block (the start of the cache order) and
    then the last shard of slot 1's block."""
    pairs = [(f"q{i}", f"db{j:02d}") for i in range(2) for j in range(20)]
    order, shards = cache_order(pairs, 4), _Shards(pairs, 2)
    assert len(shards) == 8
    own = [p for _ in range(4) for p in shards.take(0)]
    assert own == order[:20]
    assert list(shards.take(0)) == order[-5:]
    rest = [p for slot in (1, 1, 0) for p in shards.take(slot)]
    assert rest == order[20:35] and shards.take(1) is None


def test_dataloader_workers_exit_with_killed_parent(scene, tmp_path):
    """A main process killed by SIGKILL takes its image readers with it
    (without the fix one of them stays blocked on its full pipe forever)."""
    workers = killed_run(scene, tmp_path, "--num_workers", "2")
    assert len(workers) == 2
    t0 = time.monotonic()
    while any(map(alive, workers)) and time.monotonic() - t0 < DEADLINE:
        time.sleep(0.01)
    orphans = [pid for pid in workers if alive(pid)]
    for pid in orphans:
        os.kill(pid, signal.SIGKILL)
    assert not orphans, "the image readers outlive the run"


def test_ray_equals_local_sift(scene, ray_cluster, tmp_path):
    sift_run(scene, tmp_path, "ray")
    assert_same_files(scene / "local", tmp_path, SIFT)


def test_ray_equals_local_patch2pix(ray_cluster, golden_weights, tmp_path):
    """Golden weights on 192x144 images. torch's CPU kernels round
    differently with another thread count, so the local run uses the Ray
    workers' one thread."""
    make_images(tmp_path, 3, size=(192, 144), step=2)
    conf = confs["patch2pix"]
    conf = {**conf, "model": {**conf["model"], "threshold": 0.0}}
    args = (conf, tmp_path / "pairs.txt", tmp_path / "images")
    main(*args, tmp_path / "ray", weights=golden_weights, executor="ray", workers=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main(*args, tmp_path / "local", weights=golden_weights, num_workers=0)
    finally:
        torch.set_num_threads(threads)
    assert_same_files(tmp_path / "local", tmp_path / "ray", conf["output"])


def test_ray_worker_killed_mid_run(scene, ray_cluster, tmp_path, monkeypatch, logs):
    """SIGKILL a worker right after the first pair is written: its unfinished
    pairs are matched by another worker, each pair written once."""
    write, written = RawMatches.write, []

    def write_then_kill(self, n0, n1, data):
        write(self, n0, n1, data)
        written.append((n0, n1))
        if len(written) == 1:
            pids = [
                int(m.group(1))
                for r in logs.records
                for m in [re.search(r"pid (\d+) .*started", r.getMessage())]
                if m
            ]
            os.kill(pids[0], signal.SIGKILL)

    monkeypatch.setattr(RawMatches, "write", write_then_kill)
    sift_run(scene, tmp_path, "ray")
    assert sorted(written) == sorted(set(written)) and len(written) == PAIRS
    text = logs.text
    assert re.search(r"died: .*Its [1-9]\d* unfinished pairs go back", text)
    assert re.search(r"retries [1-9]\d* pairs of Ray worker", text)
    assert_same_files(scene / "local", tmp_path, SIFT)


@pytest.mark.parametrize("first,then", [("ray", "local"), ("local", "ray")])
def test_driver_killed_resumes_with_either_executor(
    scene, ray_cluster, tmp_path, first, then
):
    """The first run (the CLI; Ray through $RAY_ADDRESS) is killed by
    SIGKILL after two pairs; the other executor finishes it."""
    flags = ["--executor", first, "--workers", "2"] if first == "ray" else []
    killed_run(scene, tmp_path, *flags, env={"RAY_ADDRESS": ray_cluster})
    sift_run(scene, tmp_path, then)
    assert not (tmp_path / f"{SIFT}_pairs.h5.raw").exists()
    assert_same_files(scene / "local", tmp_path, SIFT)


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_missing_image_is_a_clean_error(scene, ray_cluster, executor):
    """An image the workers cannot see: the input error names the pair, the
    image (and the node), without a Ray traceback."""
    pairs = [("im00.png", "im01.png"), ("im01.png", "gone.png")]
    with pytest.raises(ImageError) as e:
        run_pairs(
            confs["sift"],
            None,
            pairs,
            scene / "images",
            lambda pair, pred: None,
            executor=executor,
            workers=2,
        )
    message = str(e.value)
    assert type(e.value) is ImageError
    assert "while matching the pair (im01.png, gone.png)" in message
    assert str(scene / "images" / "gone.png") in message
    assert "Traceback" not in message
    if executor == "ray":
        assert "Ray node" in message and "shared filesystem" in message
