"""Executors of the matching step: pairs in, one prediction per pair out.

``run_pairs`` matches pairs with one of two executors and hands every
finished pair to the caller's ``write(pair, pred)``, in the calling process
(the driver), serially, once per pair: workers only compute, the driver alone
writes files. ``pred`` is the matcher's output (``keypoints0``,
``keypoints1`` ``(N, 2)`` float64 in original pixels, corner convention;
``scores`` ``(N,)``) plus ``size0`` and ``size1``, the original ``(W, H)``.

- ``local``: this process; images are read ahead by DataLoader workers (which
  exit with their parent, even one killed by SIGKILL) and the per-image work
  is cached across consecutive pairs of ``cache_order``.
- ``ray``: Ray actors, one per GPU (``num_gpus=1``) or CPU slot, build the
  matcher once and match shards of pairs: consecutive runs of ``cache_order``,
  so that pairs sharing images go to the same worker. A worker that dies
  (killed, out of memory, node lost) costs only its unfinished pairs; they go
  back to the queue and another worker (or a replacement) matches them.
  Workers read the images from ``image_dir`` themselves: it must be visible
  at the same path on every node (a shared filesystem).
"""

import ctypes
import math
import os
import signal
import socket
import sys
import threading
import time
from collections import Counter, OrderedDict, defaultdict, deque
from functools import partial
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from . import logger
from .matchers import BaseMatcher, build_matcher
from .preprocess import ImageError

Pair = Tuple[str, str]
Writer = Callable[[Pair, Dict[str, np.ndarray]], None]
EXECUTORS = ("local", "ray")
CACHE_SIZE = 4  # prepared images kept per process
MAX_SHARD = 64  # pairs per shard of the Ray executor
QUEUED_CALLS = 2  # pairs sent ahead to each Ray worker (one runs, one waits)
MAX_DEATHS = 3  # workers that may die on one pair (or starting) before the run stops
WAIT_LOG_S = 60.0  # log when no Ray worker has finished a pair for this long


def run_pairs(
    conf: dict,
    weights: Optional[Path],
    pairs: Sequence[Pair],
    image_dir: Path,
    write: Writer,
    *,
    executor: str = "local",
    workers: Optional[int] = None,
    ray_address: Optional[str] = None,
    num_workers: int = 2,
    device: Optional[str] = None,
) -> None:
    """Match ``pairs`` (oriented as given) and call ``write(pair, pred)`` once
    per pair, in this process, in no particular order.

    Args:
        conf: the full conf (``model``, ``preprocessing``, optional
            ``refine``; ``hloc_file`` paths already filled in).
        weights: Patch2Pix checkpoint overriding the conf's (read by every
            worker: on a cluster, on a shared filesystem).
        executor: ``local`` or ``ray``.
        workers: Ray workers (default: one per GPU of the cluster, else one).
        ray_address: Ray cluster to join (default ``$RAY_ADDRESS``, else a
            local Ray instance is started and stopped by the run; a Ray
            already initialised by the caller is used as it is).
        num_workers: DataLoader processes that read images (local).
        device: torch device (default: CUDA when available). Ray workers
            each use their own GPU when the cluster has GPUs, unless
            ``device`` is ``cpu``.
    """
    if not pairs:
        return
    if executor == "local":
        if workers not in (None, 1) or ray_address:
            logger.warning("--workers and --ray_address apply to --executor ray only.")
        matcher = build_matcher(conf, weights, device=device)
        match_raw(matcher, pairs, Path(image_dir), write, num_workers)
    elif executor == "ray":
        run_ray(
            conf, weights, pairs, Path(image_dir), write, workers, ray_address, device
        )
    else:
        raise ValueError(f"unknown executor {executor!r}, expected one of {EXECUTORS}")


# --- order and caching ------------------------------------------------------


def load_order(pairs: Sequence[Pair], cache_size: int) -> List[str]:
    """The images to load, in order, when pairs run with an LRU cache."""
    cache: OrderedDict = OrderedDict()
    loads = []
    for pair in pairs:
        for name in pair:
            if name in cache:
                cache.move_to_end(name)
                continue
            loads.append(name)
            cache[name] = None
            if len(cache) > cache_size:
                cache.popitem(last=False)
    return loads


def cache_order(pairs: Sequence[Pair], cache_size: int) -> List[Pair]:
    """``pairs`` reordered so that an LRU cache of ``cache_size`` images misses
    rarely. Greedy: next is a pair of two cached images, else a pair of the
    most recently used image that has pairs left, else the first pair left in
    sorted order. Deterministic; the outputs do not depend on the order."""
    todo = dict.fromkeys(sorted(pairs))
    of_image: Dict[str, Dict[Pair, None]] = defaultdict(dict)
    for pair in todo:
        for name in pair:
            of_image[name][pair] = None
    cache: OrderedDict = OrderedDict()
    order = []
    while todo:
        recent = list(reversed(cache))
        pick = next(
            ((a, b) for a in recent for b in recent if (a, b) in todo),
            None,
        )
        if pick is None:
            pick = next(
                (next(iter(of_image[a])) for a in recent if of_image[a]),
                next(iter(todo)),
            )
        order.append(pick)
        del todo[pick]
        for name in pick:
            of_image[name].pop(pick, None)
            cache[name] = None
            cache.move_to_end(name)
        while len(cache) > cache_size:
            cache.popitem(last=False)
    return order


class PairCache:
    """Matches pairs one after the other, keeping the prepared images
    (``matcher.extract(load(name))``) of the last ``cache_size`` images."""

    def __init__(
        self,
        matcher: BaseMatcher,
        load: Callable[[str], Dict[str, Any]],
        cache_size: int = CACHE_SIZE,
    ):
        assert cache_size >= 2
        self.matcher, self.load, self.cache_size = matcher, load, cache_size
        self.cache: OrderedDict = OrderedDict()

    def __call__(self, pair: Pair) -> Dict[str, np.ndarray]:
        """``pred`` of the pair: the matcher's output plus ``size0``, ``size1``."""
        for name in pair:
            if name in self.cache:
                self.cache.move_to_end(name)
                continue
            try:
                self.cache[name] = self.matcher.extract(self.load(name))
            except ImageError as e:
                raise ImageError(
                    f"while matching the pair ({pair[0]}, {pair[1]}): {e}"
                ) from e
            if len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        p0, p1 = self.cache[pair[0]], self.cache[pair[1]]
        pred = self.matcher.match(p0, p1)
        return {
            **pred,
            "size0": np.asarray(p0["size"]),
            "size1": np.asarray(p1["size"]),
        }


# --- local ------------------------------------------------------------------


class ImageDataset(torch.utils.data.Dataset):
    """``matcher.load`` of each image; an ``ImageError`` is returned, not
    raised, so that the consumer raises it cleanly with its pair."""

    def __init__(self, matcher: BaseMatcher, image_dir: Path, names: Sequence[str]):
        self.matcher, self.image_dir, self.names = matcher, image_dir, names

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        try:
            return self.matcher.load(self.image_dir / self.names[i])
        except ImageError as e:
            return e


def _identity(x):
    return x


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _exit_with_parent(parent: int, worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: the worker dies with ``parent``.

    A parent killed by SIGKILL (as by the OOM killer) cannot stop its
    workers, and a worker blocked on writing an image into the full pipe to
    its parent never reaches torch's own parent check. On Linux the kernel
    sends the worker SIGKILL when the parent dies; elsewhere a thread polls
    the parent's pid."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    else:

        def watch():
            while os.getppid() == parent:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent:  # died before prctl took effect
        os._exit(1)


def match_raw(
    matcher: BaseMatcher,
    pairs: Sequence[Pair],
    image_dir: Path,
    write: Writer,
    num_workers: int,
    cache_size: int = CACHE_SIZE,
) -> None:
    """Match ``pairs`` in ``cache_order`` in this process, images read ahead
    by ``num_workers`` DataLoader processes; ``write(pair, pred)`` each."""
    pairs = cache_order(pairs, cache_size)
    loader = torch.utils.data.DataLoader(
        ImageDataset(matcher, image_dir, load_order(pairs, cache_size)),
        batch_size=None,
        num_workers=num_workers,
        collate_fn=_identity,
        worker_init_fn=partial(_exit_with_parent, os.getpid()),
    )
    images = iter(loader)

    def load(name: str) -> Dict[str, Any]:
        data = next(images)  # load_order is the order in which PairCache asks
        if isinstance(data, ImageError):
            raise data
        return data

    match = PairCache(matcher, load, cache_size)
    for pair in tqdm(pairs, smoothing=0.1):
        write(pair, match(pair))


# --- Ray ----------------------------------------------------------------------


def import_ray():
    try:
        import ray
    except ImportError as e:
        raise ImportError(
            "the ray executor needs Ray: pip install 'p2p_hloc[ray]'"
        ) from e
    return ray


class MatchWorker:
    """A Ray actor (``ray.remote(MatchWorker)``): ``start`` builds the
    matcher once, ``match`` matches one pair with a ``PairCache``."""

    def __init__(
        self,
        conf: dict,
        weights: Optional[Path],
        image_dir: Path,
        threads: int,
        device: str,
        cache_size: int = CACHE_SIZE,
    ):
        self.args = (conf, weights, device)
        self.image_dir, self.threads, self.cache_size = image_dir, threads, cache_size
        self.match_pair: Optional[PairCache] = None
        self.node = (
            f"{socket.gethostname()} ({import_ray().util.get_node_ip_address()})"
        )

    def start(self) -> Dict[str, Any]:
        """Build the matcher; returns ``pid``, ``node``, ``threads``, ``device``."""
        torch.set_num_threads(self.threads)
        conf, weights, device = self.args
        matcher = build_matcher(conf, weights, device=device)
        self.match_pair = PairCache(
            matcher, partial(self.load, matcher), self.cache_size
        )
        return {
            "pid": os.getpid(),
            "node": self.node,
            "threads": torch.get_num_threads(),
            "device": device,
        }

    def load(self, matcher: BaseMatcher, name: str) -> Dict[str, Any]:
        path = self.image_dir / name
        if not path.is_file():
            raise ImageError(
                f"image {path} not found on the Ray node {self.node}: image_dir "
                "must be visible at the same path on every node (shared filesystem)"
            )
        return matcher.load(path)

    def match(self, n0: str, n1: str) -> Dict[str, np.ndarray]:
        return self.match_pair((n0, n1))


class _Worker:
    """The driver's record of one actor."""

    def __init__(self, index: int, slot: int, actor, started):
        self.index, self.slot, self.actor, self.started = index, slot, actor, started
        self.info: Optional[Dict[str, Any]] = None
        self.shard: Deque[Pair] = deque()
        self.calls: Deque[Tuple[Any, Pair]] = deque()  # (ref, pair), in call order

    def __str__(self):
        if self.info is None:
            return f"Ray worker {self.index}"
        return (
            f"Ray worker {self.index} (pid {self.info['pid']} on {self.info['node']})"
        )


def _connect(ray, address: Optional[str]) -> bool:
    """Connect to Ray; returns whether this run should disconnect at the end."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:  # workers at this process's priority, not Ray's default niceness 15
        ray.init(
            address="local",
            include_dashboard=False,
            _system_config={"worker_niceness": 0},
        )
    return True


def _resources(ray, workers: Optional[int], device: Optional[str]):
    """``(workers, actor options, torch threads, device)`` for the cluster."""
    res = ray.cluster_resources()
    cpus, gpus = res.get("CPU", 1.0), int(res.get("GPU", 0))
    use_gpu = gpus > 0 and (device is None or str(device).startswith("cuda"))
    workers = workers or (gpus if use_gpu else 1)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    share = cpus / workers
    threads = max(1, int(share))
    if use_gpu:  # Ray shows each worker its own GPU only
        return workers, {"num_gpus": 1, "num_cpus": 1}, threads, "cuda"
    return workers, {"num_cpus": threads if share >= 1 else share}, threads, "cpu"


class _Shards:
    """Consecutive runs of ``cache_order`` (about four per worker, at most
    ``MAX_SHARD`` pairs), dealt out in one block of consecutive shards per
    worker slot so that each worker walks its own stretch of the order: a
    worker takes the next shard of its block, else the last shard of the
    longest block."""

    def __init__(self, pairs: Sequence[Pair], workers: int):
        order = cache_order(pairs, CACHE_SIZE)
        size = max(1, min(MAX_SHARD, math.ceil(len(order) / (4 * workers))))
        shards = [deque(order[i : i + size]) for i in range(0, len(order), size)]
        per = math.ceil(len(shards) / workers)
        self.blocks = [deque(shards[i * per : (i + 1) * per]) for i in range(workers)]

    def __len__(self) -> int:
        return sum(map(len, self.blocks))

    def take(self, slot: int) -> Optional[Deque[Pair]]:
        if self.blocks[slot]:
            return self.blocks[slot].popleft()
        longest = max(self.blocks, key=len)
        return longest.pop() if longest else None

    def put_back(self, slot: int, shard: Deque[Pair]) -> None:
        self.blocks[slot].appendleft(shard)


def _cause(e: Exception) -> Exception:
    """The exception raised inside a Ray task, without Ray's wrapping."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, Exception) else e


def _absolute(conf: Any) -> Any:
    """``conf`` with every ``Path`` in it made absolute (workers run elsewhere)."""
    if isinstance(conf, dict):
        return {k: _absolute(v) for k, v in conf.items()}
    return conf.resolve() if isinstance(conf, Path) else conf


class _Retry(deque):
    """A shard of pairs left unfinished by a worker that died."""

    def __init__(self, pairs, origin: str):
        super().__init__(pairs)
        self.origin = origin


def run_ray(
    conf: dict,
    weights: Optional[Path],
    pairs: Sequence[Pair],
    image_dir: Path,
    write: Writer,
    workers: Optional[int] = None,
    address: Optional[str] = None,
    device: Optional[str] = None,
) -> None:
    """The Ray executor of ``run_pairs``."""
    ray = import_ray()
    from ray.exceptions import GetTimeoutError, OutOfMemoryError, RayActorError

    died = (RayActorError, OutOfMemoryError)
    disconnect = _connect(ray, address)
    workers, options, threads, device = _resources(ray, workers, device)
    actor_class = ray.remote(max_restarts=0, **options)(MatchWorker)
    weights = None if weights is None else Path(weights).resolve()
    args = (_absolute(conf), weights, Path(image_dir).resolve(), threads, device)
    queue = _Shards(pairs, workers)
    logger.info(
        "Matching %d pairs in %d shards on %d Ray workers (%s, %d torch threads).",
        len(pairs),
        len(queue),
        workers,
        device,
        threads,
    )
    pool: List[_Worker] = []
    count = iter(range(sys.maxsize))
    deaths: Counter = Counter()  # per pair, or "start"
    done = set()

    def get(ref, timeout=None):
        try:
            return ray.get(ref, timeout=timeout)
        except ray.exceptions.RayTaskError as e:  # e.g. an ImageError
            raise _cause(e) from e

    def start(slot: int) -> None:
        actor = actor_class.remote(*args)
        pool.append(_Worker(next(count), slot, actor, actor.start.remote()))

    def feed(w: _Worker) -> None:
        while len(w.calls) < QUEUED_CALLS:
            if not w.shard:
                w.shard = queue.take(w.slot)
                if w.shard is None:
                    w.shard = deque()
                    return
                if isinstance(w.shard, _Retry):
                    logger.info(
                        "%s retries %d pairs of %s.", w, len(w.shard), w.shard.origin
                    )
            pair = w.shard.popleft()
            w.calls.append((w.actor.match.remote(*pair), pair))

    def finish(pair: Pair, pred: Dict[str, np.ndarray]) -> None:
        if pair not in done:
            write(pair, pred)
            done.add(pair)
            bar.update()

    def lost(w: _Worker, error: Exception) -> None:
        """Requeue the unfinished pairs of a dead worker; start another."""
        pool.remove(w)
        ray.kill(w.actor)
        unfinished = []
        for ref, pair in w.calls:
            try:
                finish(pair, get(ref, timeout=0))
            except (GetTimeoutError, *died):
                unfinished.append(pair)
        # what it was doing: the first unfinished pair, or starting
        running = unfinished[0] if unfinished else "start" if w.info is None else None
        if running is not None:
            deaths[running] += 1
            if deaths[running] >= MAX_DEATHS:
                what = "starting" if running == "start" else f"matching {running}"
                raise RuntimeError(
                    f"{deaths[running]} Ray workers died while {what}, the last "
                    f"one {w}: {error}"
                )
        unfinished += w.shard
        logger.warning(
            "%s died: %s. Its %d unfinished pairs go back to the queue.",
            w,
            str(error).strip().splitlines()[0].rstrip("."),
            len(unfinished),
        )
        if unfinished:
            queue.put_back(w.slot, _Retry(unfinished, str(w)))
        start(w.slot)

    bar = tqdm(total=len(pairs), smoothing=0.1)
    try:
        for slot in range(workers):
            start(slot)
        while len(done) < len(pairs):
            owner = {}
            for w in pool:
                if w.info is None:
                    owner[w.started] = (w, None)
                    continue
                feed(w)
                owner.update((ref, (w, pair)) for ref, pair in w.calls)
            ready, _ = ray.wait(list(owner), num_returns=1, timeout=WAIT_LOG_S)
            if not ready:
                logger.info(
                    "Waiting for Ray workers: %d pairs left, %d of %d workers "
                    "started (free resources: %s).",
                    len(pairs) - len(done),
                    sum(w.info is not None for w in pool),
                    len(pool),
                    ray.available_resources(),
                )
                continue
            w, pair = owner[ready[0]]
            try:
                result = get(ready[0])
            except died as e:
                lost(w, e)
                continue
            if pair is None:
                w.info = result
                logger.info(
                    "%s started: %d torch threads, %s.",
                    w,
                    result["threads"],
                    result["device"],
                )
            else:
                w.calls.remove((ready[0], pair))
                finish(pair, result)
    finally:
        bar.close()
        for w in pool:
            ray.kill(w.actor)
        if disconnect:
            ray.shutdown()
