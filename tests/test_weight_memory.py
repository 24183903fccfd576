"""Where the engine keeps the weights it streams: copied out of the caller's memory (huge-page
arenas, cpp/huge_page_arena.h), after which the file mapping's pages it read are dropped from this
process (_core._release_file_pages) without changing what the mapping reads."""
import numpy as np

from wrinklefree_rt import _core


def _rss_file_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssFile:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no RssFile in /proc/self/status")


def test_release_drops_a_read_only_mappings_pages_and_keeps_its_bytes(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 48 << 20, dtype=np.uint8)
    path = tmp_path / "weights.bin"
    data.tofile(path)
    whole = np.memmap(path, dtype=np.uint8, mode="r")
    view = whole[100:(40 << 20) + 100]  # not page aligned: only whole pages inside go
    assert int(view.sum(dtype=np.int64)) == int(data[100:(40 << 20) + 100].sum(dtype=np.int64))
    before = _rss_file_mib()
    _core._release_file_pages(view)
    assert before - _rss_file_mib() > 32
    np.testing.assert_array_equal(view, data[100:(40 << 20) + 100])


def test_release_leaves_memory_that_is_not_a_read_only_file_mapping(tmp_path):
    heap = np.full(8 << 20, 7, np.uint8)
    _core._release_file_pages(heap[5:])
    assert (heap == 7).all()
    path = tmp_path / "rw.bin"
    np.full(8 << 20, 3, np.uint8).tofile(path)
    writable = np.memmap(path, dtype=np.uint8, mode="r+")
    writable[:10] = 9
    _core._release_file_pages(writable)
    assert (writable[:10] == 9).all() and (writable[10:] == 3).all()
