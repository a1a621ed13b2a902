"""The raw-match format and store (p2p_hloc.io.raw) in the details a
mutation run (tools/mutation.py) found untested: every check of
``validate_raw`` with its message, the fast ``.npz`` reader on every zip and
``.npy`` layout numpy and zipfile write (it must read them without falling
back to ``np.load``, and equal to it), the fallback for the others, and the
store's layout, errors and metadata."""

import hashlib
import io
import json
import zipfile

import numpy as np
import pytest

from p2p_hloc.io import raw as raw_module
from p2p_hloc.io.raw import (
    RawMatches,
    RawMatchesError,
    raw_files,
    read_raw,
    validate_raw,
)

N = 30


def arrays(**changes):
    """One pair's raw matches in the public format."""
    rng = np.random.default_rng(0)
    data = dict(
        name0="db/a.png",
        name1="q/b.png",
        keypoints0=rng.uniform(0, 90, (N, 2)).astype(np.float32),
        keypoints1=rng.uniform(0, 60, (N, 2)),
        scores=rng.uniform(0, 1, N).astype(np.float32),
        size0=np.array([96, 64]),
        size1=np.array([80, 120]),
    )
    return {**data, **changes}


def npy_bytes(array, version=None) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asanyarray(array), version=version)
    return buf.getvalue()


def write_zip(path, members, compression=zipfile.ZIP_STORED, extra=b"", comment=b""):
    """A zip of ``members`` (name -> bytes) with per-member ``extra`` fields
    and ``comment``s."""
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = compression
            info.extra, info.comment = extra, comment
            z.writestr(info, data)
    return path


def npz_members(data, version=None, suffix=".npy"):
    return {k + suffix: npy_bytes(v, version) for k, v in data.items()}


@pytest.fixture
def fast_only(monkeypatch):
    """``read_raw`` may not fall back to ``np.load``: the fast reader must
    handle the file itself (np.load costs 1.5-3 ms a file, a third of the
    quantization step at Aachen size)."""

    def fail(path):
        raise AssertionError(f"{path} fell back to np.load")

    monkeypatch.setattr(raw_module, "_load_npz", fail)


def assert_reads_as(path, data):
    got = read_raw(path)
    for k in ("keypoints0", "keypoints1", "scores"):
        np.testing.assert_array_equal(got[k], data[k], err_msg=k)
        assert got[k].dtype == np.asarray(data[k]).dtype, k
    assert (got["name0"], got["name1"]) == (data["name0"], data["name1"])
    for k in ("size0", "size1"):
        assert got[k].tolist() == list(data[k]) and got[k].dtype == np.int64


# -- the fast reader -------------------------------------------------------


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_numpy_files_are_read_without_fallback(tmp_path, save, fast_only):
    data = arrays()
    save(tmp_path / "p.npz", **data)
    assert_reads_as(tmp_path / "p.npz", data)


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_npy_versions_and_zip_layouts(tmp_path, version, compression, fast_only):
    """.npy headers of versions 1-3, Fortran-ordered arrays, members with
    extra fields and comments, a member that is not one of ours (first, so
    the others come after it), a zip comment: all read by the fast path, as
    np.load reads them."""
    data = arrays(
        keypoints0=np.asfortranarray(arrays()["keypoints0"]),
        keypoints1=np.asfortranarray(arrays()["keypoints1"][:, ::-1]),
    )
    assert np.isfortran(data["keypoints0"])
    members = {"other.npy": npy_bytes(np.arange(5), version)}
    members.update(npz_members(data, version))
    extra = (0xCAFE).to_bytes(2, "little") + (6).to_bytes(2, "little") + b"abcdef"
    path = write_zip(tmp_path / "p.npz", members, compression, extra, b"a comment")
    with zipfile.ZipFile(path, "a") as z:
        z.comment = b"x" * 1000
    assert_reads_as(path, data)
    with np.load(path) as f:
        np.testing.assert_array_equal(f["keypoints1"], data["keypoints1"])


def test_members_without_npy_suffix(tmp_path, fast_only):
    data = arrays()
    path = write_zip(tmp_path / "p.npz", npz_members(data, suffix=""))
    assert_reads_as(path, data)


def test_the_end_record_is_found_behind_the_longest_comment(tmp_path, fast_only):
    data = arrays()
    np.savez(tmp_path / "p.npz", **data)
    with zipfile.ZipFile(tmp_path / "p.npz", "a") as z:
        z.comment = b"c" * 65535  # the longest a zip comment can be
    assert_reads_as(tmp_path / "p.npz", data)


def test_end_signature_inside_the_data(tmp_path, fast_only):
    """Array bytes that look like the zip's end record do not confuse it."""
    fake = np.frombuffer(b"PK\x05\x06" * (2 * N), np.float32).reshape(N, 2).copy()
    assert np.isfinite(fake).all()
    data = arrays(keypoints0=fake)
    np.savez(tmp_path / "p.npz", **data)
    assert_reads_as(tmp_path / "p.npz", data)


def test_a_long_local_extra_field(tmp_path, fast_only):
    """Local header lengths are unsigned 16-bit numbers (up to 65535)."""
    data = arrays()
    size = 40000
    extra = (0xCAFE).to_bytes(2, "little") + size.to_bytes(2, "little") + b"e" * size
    path = write_zip(tmp_path / "p.npz", npz_members(data), extra=extra)
    assert_reads_as(path, data)


def test_other_layouts_fall_back_to_numpy(tmp_path):
    """ZIP64 entries, other compressions and unusual .npy headers are read by
    np.load, with the same result."""
    data = arrays()
    limit = zipfile.ZIP64_LIMIT
    zipfile.ZIP64_LIMIT = 16  # every entry gets ZIP64 sizes
    try:
        np.savez(tmp_path / "zip64.npz", **data)
    finally:
        zipfile.ZIP64_LIMIT = limit
    with zipfile.ZipFile(tmp_path / "zip64.npz") as z:  # the end record's
        z.testzip()
    assert_reads_as(tmp_path / "zip64.npz", data)
    path = write_zip(tmp_path / "bz2.npz", npz_members(data), zipfile.ZIP_BZIP2)
    assert_reads_as(path, data)
    members = npz_members(data)
    header = "{'shape': (30,), 'fortran_order': False, 'descr': '<f4'}"
    members["scores.npy"] = (
        b"\x93NUMPY\x01\x00"
        + (len(header) + 1).to_bytes(2, "little")
        + header.encode()
        + b"\n"
        + data["scores"].tobytes()
    )
    assert_reads_as(write_zip(tmp_path / "header.npz", members), data)


def test_a_long_version_1_header(tmp_path, fast_only):
    """A version 1 header may be up to 65535 bytes long (unsigned)."""
    data = arrays()
    members = npz_members(data)
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (30,), }"
    header = header.ljust(40000) + "\n"
    members["scores.npy"] = (
        b"\x93NUMPY\x01\x00"
        + len(header).to_bytes(2, "little")
        + header.encode()
        + data["scores"].tobytes()
    )
    assert_reads_as(write_zip(tmp_path / "p.npz", members), data)


SCORES = npy_bytes(np.arange(N, dtype=np.float32))


@pytest.mark.parametrize(
    "member, message",
    [
        (b"hello, this is not an array", "not a .npy member"),
        (SCORES[:6] + b"\x04" + SCORES[7:], "not a .npy member"),  # version 4
        (b"\x93NUMPX" + SCORES[6:], "not a .npy member"),
        (npy_bytes(np.arange(N, dtype=np.float64))[:-8], "truncated array"),
        (npy_bytes(np.array([1.0, None] * 15)), "object arrays are not raw matches"),
    ],
)
def test_bad_npy_members(tmp_path, member, message):
    members = npz_members(arrays())
    members["scores.npy"] = member
    path = write_zip(tmp_path / "p.npz", members)
    with pytest.raises(
        RawMatchesError, match=rf"^corrupt raw-match file .*p.npz: {message}$"
    ):
        read_raw(path)


def test_object_arrays_are_never_unpickled(tmp_path):
    """Not by the fallback either (a pickle runs code when loaded)."""
    members = npz_members(arrays())
    members["scores.npy"] = npy_bytes(np.array([1.0, None] * 15))
    path = write_zip(tmp_path / "p.npz", members, zipfile.ZIP_BZIP2)
    with pytest.raises(RawMatchesError, match="p.npz.*allow_pickle"):
        read_raw(path)


def test_damaged_zips_say_what_is_wrong(tmp_path):
    data = arrays()
    np.savez(tmp_path / "p.npz", **data)
    good = (tmp_path / "p.npz").read_bytes()
    cases = {
        "junk.npz": good + bytes(70000),  # the end record is not at the end
        "cut.npz": good[: len(good) // 2],
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(RawMatchesError, match=f"{name}: not a zip file"):
            read_raw(tmp_path / name)
    # the central directory's offset points at something else
    end = good.rfind(b"PK\x05\x06")
    wrong = bytearray(good)
    wrong[end + 16 : end + 20] = (0).to_bytes(4, "little")
    (tmp_path / "cd.npz").write_bytes(bytes(wrong))
    with pytest.raises(RawMatchesError, match="cd.npz: bad central directory"):
        read_raw(tmp_path / "cd.npz")
    # a flipped byte in a stored member's data
    damaged = bytearray(good)
    at = good.find(data["keypoints1"].tobytes())
    damaged[at + 5] ^= 0xFF
    (tmp_path / "crc.npz").write_bytes(bytes(damaged))
    with pytest.raises(RawMatchesError, match="crc.npz: bad CRC or size of keypoints1"):
        read_raw(tmp_path / "crc.npz")
    # a zip without members holds none of the keys
    with zipfile.ZipFile(tmp_path / "empty.npz", "w"):
        pass
    with pytest.raises(RawMatchesError, match="empty.npz: missing name0, name1,"):
        read_raw(tmp_path / "empty.npz")


# -- validate_raw --------------------------------------------------------------


def test_missing_keys_are_all_listed():
    data = {k: v for k, v in arrays().items() if k not in ("scores", "size1")}
    with pytest.raises(RawMatchesError, match=r"^here: missing scores, size1$"):
        validate_raw(data, "here")


@pytest.mark.parametrize(
    "name", [np.array(["a", "b"]), np.array(3), np.array([b"a"]), 1.5]
)
def test_names_must_be_strings(name):
    with pytest.raises(RawMatchesError, match=r"^here: name1 is not a string$"):
        validate_raw(arrays(name1=name), "here")


def test_byte_string_names_are_decoded():
    out = validate_raw(arrays(name0=np.bytes_(b"db/a.png"), name1="q/b.png"), "x")
    assert out["name0"] == "db/a.png" and type(out["name0"]) is str
    assert out["name1"] == "q/b.png" and type(out["name1"]) is str


@pytest.mark.parametrize(
    "key, value, got",
    [
        ("keypoints0", np.zeros((N, 3)), r"float64 \(30, 3\)"),
        ("keypoints0", np.zeros(2 * N), r"float64 \(60,\)"),
        ("keypoints1", np.zeros((N, 2, 1)), r"float64 \(30, 2, 1\)"),
        ("keypoints1", np.zeros((N, 2), bool), r"bool \(30, 2\)"),
        ("keypoints1", np.zeros((N, 2), complex), r"complex128 \(30, 2\)"),
        ("scores", np.zeros((N, 1)), r"float64 \(30, 1\)"),
        ("scores", np.array(["x"] * N), r"<U1 \(30,\)"),
    ],
)
def test_array_shapes_and_types(key, value, got):
    shape = "'N', 2" if key != "scores" else "'N',"
    with pytest.raises(
        RawMatchesError,
        match=rf"^here: {key} must be a float array of shape \({shape}\), got {got}$",
    ):
        validate_raw(arrays(**{key: value}), "here")


@pytest.mark.parametrize("short", ["keypoints0", "keypoints1", "scores"])
def test_lengths_must_agree(short):
    data = arrays()
    data[short] = data[short][:-1]
    with pytest.raises(
        RawMatchesError,
        match=r"^here: keypoints0, keypoints1 and scores differ in length$",
    ):
        validate_raw(data, "here")


@pytest.mark.parametrize(
    "dtype, want",
    [
        (np.float16, np.float32),
        (np.float32, np.float32),
        (np.float64, np.float64),
        (np.int8, np.float32),
        (np.uint16, np.float32),
        (np.int32, np.float64),
        (np.int64, np.float64),
    ],
)
def test_integer_and_half_arrays_become_float(dtype, want):
    data = arrays()
    data["keypoints1"] = np.arange(2 * N).reshape(N, 2).astype(dtype)
    out = validate_raw(data, "here")
    assert out["keypoints1"].dtype == want
    np.testing.assert_array_equal(out["keypoints1"], np.arange(2 * N).reshape(N, 2))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values(bad):
    data = arrays()
    data["scores"] = data["scores"].copy()
    data["scores"][3] = bad
    with pytest.raises(RawMatchesError, match=r"^here: scores has NaN or infinite"):
        validate_raw(data, "here")


@pytest.mark.parametrize(
    "size",
    [
        [96, 64, 1],
        [96.5, 64],
        [1, 64],
        [96, 0],
        [96, np.inf],
        np.array(["96", "64"]),
    ],
)
def test_sizes_are_two_whole_numbers_above_one(size):
    with pytest.raises(
        RawMatchesError,
        match=r"^here: size1 must be \(width, height\) of the image in pixels, got ",
    ):
        validate_raw(arrays(size1=np.asarray(size)), "here")


def test_the_smallest_size_and_float_sizes():
    out = validate_raw(
        arrays(size0=np.array([2, 2], np.uint16), size1=np.array([96.0, 64])), ""
    )
    assert out["size0"].tolist() == [2, 2] and out["size1"].tolist() == [96, 64]
    assert out["size0"].dtype == out["size1"].dtype == np.int64


# -- the store -------------------------------------------------------------------


def test_store_layout_and_dtypes(tmp_path):
    """``root/<2 hex>/<sha1 of name0 \\0 name1>.npz``; keypoints are stored in
    hloc's convention in float32 for float32 (or smaller) input, float64
    otherwise."""
    store = RawMatches(tmp_path / "raw")
    h = hashlib.sha1(b"db/a.png\0q/b.png").hexdigest()
    assert store.path("db/a.png", "q/b.png") == tmp_path / "raw" / h[:2] / f"{h}.npz"
    pred = arrays(
        keypoints0=np.full((N, 2), 0.5, np.float16),
        keypoints1=np.arange(2 * N, dtype=np.int32).reshape(N, 2),
    )
    store.write("db/a.png", "q/b.png", pred)
    out = store.read("db/a.png", "q/b.png")
    assert out["keypoints0"].dtype == np.float32
    np.testing.assert_array_equal(out["keypoints0"], np.zeros((N, 2)))
    assert out["keypoints1"].dtype == np.float64
    np.testing.assert_array_equal(out["keypoints1"], pred["keypoints1"] - 0.5)
    store.write("db/a.png", "q/c.png", arrays())
    assert store.read("db/a.png", "q/c.png")["keypoints1"].dtype == np.float64
    assert [p.name for p in raw_files(store.root)] == sorted(
        [store.path("db/a.png", "q/b.png").name, store.path("db/a.png", "q/c.png").name]
    )


def test_store_errors_name_the_pair_and_file(tmp_path):
    store = RawMatches(tmp_path / "raw")
    bad = arrays(scores=np.full(N, np.nan, np.float32))
    with pytest.raises(
        RawMatchesError, match=r"^raw matches of the pair \(a, b\): scores has NaN"
    ):
        store.write("a", "b", bad)
    assert store.empty()
    store.write("a", "b", arrays())
    path = store.path("c", "d")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(store.path("a", "b").read_bytes())  # the wrong pair's file
    with pytest.raises(
        RawMatchesError, match=rf"^{path} does not hold the pair \(c, d\)$"
    ):
        store.read("c", "d")
    path.write_bytes(b"damaged")
    with pytest.raises(
        RawMatchesError, match=r"\(pair \(c, d\)\); delete it to recompute the pair$"
    ):
        store.read("c", "d")
    missing = tmp_path / "nowhere"
    with pytest.raises(
        RawMatchesError, match=rf"^raw-match folder {missing} does not exist$"
    ):
        next(raw_files(missing))


def test_store_metadata_and_removal(tmp_path):
    store = RawMatches(tmp_path / "raw")
    store.remove()  # nothing to remove: harmless
    store.set_meta({"b": 1, "a": [1, 2]})
    assert store.empty()  # a meta.json only
    assert json.loads((store.root / "meta.json").read_text()) == store.meta()
    assert store.meta() == {"a": [1, 2], "b": 1}
    (store.root / "meta.json").write_bytes(b"\xff\xfe")
    with pytest.raises(
        RawMatchesError,
        match=rf"corrupt .*meta.json .*; delete the folder {store.root} to "
        r"recompute its pairs$",
    ):
        store.meta()
    store.remove()
    assert not store.root.exists()
