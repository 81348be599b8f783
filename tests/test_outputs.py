"""Issue 16: outputs others can read (umask permissions), unwritable or full output folders, one writer per folder,
and a deterministic exit 130 on interrupts."""
from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ICSSCAN, SAMPLE, run_cli

UMASKS = [0o022, 0o077]


def modes_under(root: Path) -> dict[str, int]:
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = stat.S_IMODE(p.lstat().st_mode)
    return out


def assert_umask_modes(root: Path, mask: int) -> None:
    wrong = {}
    for rel, mode in modes_under(root).items():
        want = (0o777 if (root / rel).is_dir() else 0o666) & ~mask
        if mode != want:
            wrong[rel] = oct(mode)
    assert not wrong, f"not {oct(mask)}-umask permissions: {wrong}"


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


@pytest.mark.parametrize("mask", UMASKS, ids=["022", "077"])
def test_atomic_writers_give_umask_permissions(mask, umask, tmp_path):
    from icsscan.files import atomic_write, default_mode, write_text_atomic
    from icsscan.runinfo import write_json_atomic

    umask(mask)
    assert default_mode() == 0o666 & ~mask and default_mode(folder=True) == 0o777 & ~mask
    with atomic_write(tmp_path / "a.bin", "wb") as f:
        f.write(b"x")
    write_text_atomic(tmp_path / "b.txt", "y")
    write_json_atomic(tmp_path / "c.json", {"z": 1})
    assert_umask_modes(tmp_path / "a.bin", mask)
    assert_umask_modes(tmp_path / "b.txt", mask)
    assert_umask_modes(tmp_path / "c.json", mask)
    assert (tmp_path / "b.txt").read_text() == "y" and not list(tmp_path.glob(".*"))


@pytest.fixture(scope="module")
def fitted():
    """A briefly trained detector (seconds) to save as a whole bundle."""
    import torch

    from icsscan import ICSDetector
    from icsscan.config import preset_config

    cfg = preset_config("default", backbone="small", iterations=2, ae_epochs=1, batch_size=8, device="cpu", seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return ICSDetector(config=cfg).fit(SAMPLE / "good")
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("mask", UMASKS, ids=["022", "077"])
def test_bundle_and_report_follow_the_umask(mask, umask, fitted, tiny_bundle, tmp_path):
    """The whole bundle (a renamed mkdtemp folder) and a full report, as open()/mkdir() would leave them."""
    from icsscan.report import prepare_out_dir, write_report
    from icsscan.scan import scan_folder

    umask(mask)
    out = fitted.save(tmp_path / "model", export_onnx=True)
    assert_umask_modes(out, mask)
    result = scan_folder(SAMPLE / "incoming", tiny_bundle, workers=1)
    report = prepare_out_dir(tmp_path / "report")
    write_report(result, report, str(SAMPLE / "incoming"), {"csv", "json", "junit"})
    assert {"scores.csv", "summary.json", "junit.xml", "report.html", "thumbs"} <= {p.name for p in report.iterdir()}
    assert_umask_modes(report, mask)


# The issue's own check (after `train` and `scan` under umask 022 everything is world-readable) rides on the CLI train
# and scan that test_train_scan_e2e.test_design_card_two_commands runs anyway.


# --------------------------------------------------------------------------------------------- unwritable, full

def one_line(r) -> str:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def drop_root_file_powers() -> None:
    """preexec: stay root but lose CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER (dropped from the bounding
    set, so the exec'd CLI never has them): permissions then bind us like any user."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.fixture
def unwritable_parent(tmp_path):
    """A folder the CLI cannot write in: someone else's 0755 folder (root here runs without its file powers)."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o755)
    if os.geteuid() == 0:
        os.chown(locked, 65534, 65534)
        probe = subprocess.run(["true"], preexec_fn=drop_root_file_powers)  # noqa: PLW1510
        if probe.returncode:
            pytest.skip("cannot drop root's capabilities here")
        preexec = drop_root_file_powers
    else:
        locked.chmod(0o555)
        preexec = None
    yield tmp_path, preexec
    locked.chmod(0o755)


def run_as(preexec, *args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([*ICSSCAN, *map(str, args)], capture_output=True, text=True, env=env, timeout=300,
                          preexec_fn=preexec, cwd="/")


def test_out_in_an_unwritable_folder_is_a_usage_error(unwritable_parent, tiny_onnx):
    base, preexec = unwritable_parent
    out = base / "locked" / "report"
    r = run_as(preexec, "scan", SAMPLE / "incoming", "--model", tiny_onnx, "--out", out)
    assert r.returncode == 2, r.stderr
    line = one_line(r)
    assert str(base / "locked") in line and "cannot write" in line and "choose a folder" in line
    started = time.monotonic()
    r = run_as(preexec, "train", SAMPLE / "good", "--out", out)
    assert r.returncode == 2, r.stderr
    assert "cannot write" in one_line(r) and not out.exists()
    assert time.monotonic() - started < 60, "refused only after training"


def test_out_under_a_file_is_a_usage_error(tmp_path):
    (tmp_path / "file").write_text("x")
    r = run_cli("train", SAMPLE / "good", "--out", tmp_path / "file" / "model")
    assert r.returncode == 2, r.stderr
    assert "is not a folder" in one_line(r)


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_mid_report_keeps_the_previous_report(tiny_bundle, tmp_path, monkeypatch):
    from icsscan import runinfo
    from icsscan.files import OutputError
    from icsscan.report import prepare_out_dir, write_report
    from icsscan.scan import scan_folder

    result = scan_folder(SAMPLE / "incoming", tiny_bundle, workers=1)
    out = prepare_out_dir(tmp_path / "report")
    write_report(result, out, "first", {"csv", "json", "junit"})
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    result.rows = result.rows[:5]  # the second report would differ in every file
    monkeypatch.setattr(runinfo.json, "dump", no_space)  # summary.json, the last file, hits the full disk
    with pytest.raises(OutputError, match="no space left on device while writing summary.json"):
        write_report(result, prepare_out_dir(out), "second", {"csv", "json"})
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before, "the previous report was changed"
    assert not list(out.glob(".*.tmp"))


def test_full_disk_is_exit_2_with_one_line(tiny_bundle, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from icsscan import runinfo
    from icsscan.cli import app

    monkeypatch.setattr(runinfo.json, "dump", no_space)
    r = CliRunner().invoke(app, ["scan", str(SAMPLE / "incoming"), "--model", str(tiny_bundle),
                                 "--out", str(tmp_path / "report"), "--workers", "1"])
    assert r.exit_code == 2, r.output
    assert "no space left on device" in r.output and "internal error" not in r.output


class _NoSpaceFile:
    """A binary file on a full disk: every write fails with ENOSPC."""

    def __init__(self, f):
        self.f = f

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")


def full_disk_for_binary_writes(monkeypatch):
    """Atomic binary writes (the model states: torch.save output) hit a full disk; text files still go through."""
    from icsscan import files

    real_fdopen = os.fdopen

    def fdopen(fd, mode="r", *args, **kwargs):
        f = real_fdopen(fd, mode, *args, **kwargs)
        return _NoSpaceFile(f) if "b" in mode else f

    monkeypatch.setattr(files.os, "fdopen", fdopen)


def test_full_disk_while_saving_the_bundle_keeps_the_previous_one(fitted, tmp_path, monkeypatch):
    """torch.save given a path reports ENOSPC as a RuntimeError without errno (exit 4 before); the states are
    now written through Python, so a full disk is one line, exit 2, and the previous bundle stays."""
    from typer.testing import CliRunner

    from icsscan.cli import app
    from icsscan.detector import ICSDetector
    from icsscan.files import OutputError

    target = fitted.save(tmp_path / "model")
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    full_disk_for_binary_writes(monkeypatch)
    with pytest.raises(OutputError, match="no space left on device while saving the model bundle"):
        fitted.save(target)

    def fit(self, X, y=None, split=None, defects=None):  # no training: the test is about the save
        self.__dict__.update(fitted.__dict__)
        return self

    monkeypatch.setattr(ICSDetector, "fit", fit)
    r = CliRunner().invoke(app, ["train", str(SAMPLE / "good"), "--out", str(target)])
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "no space left on device while saving the model bundle" in lines[0], r.output
    assert "internal error" not in r.output
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before, "the previous bundle was changed"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.lock", "model"] or \
        sorted(p.name for p in tmp_path.iterdir()) == ["model"], "temporary files left behind"


def test_torch_save_on_a_really_full_disk_keeps_the_previous_bundle(fitted, tmp_path):
    """The same on a real full file system (a small tmpfs; needs root, else skipped), sized so that the first
    state file of the second save (torch.save's output) is what no longer fits."""
    if os.geteuid() != 0 or sys.platform != "linux":
        pytest.skip("mounting a small tmpfs needs root on Linux")
    from icsscan.files import OutputError

    mnt = tmp_path / "small"
    mnt.mkdir()
    mount = lambda *opts: subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(opts), "tmpfs", str(mnt)],  # noqa: E731
                                         capture_output=True).returncode == 0
    if not mount("size=64m"):
        pytest.skip("cannot mount a tmpfs here")
    try:
        target = fitted.save(mnt / "model")
        before = {p.name: p.read_bytes() for p in target.iterdir()}
        first_state = min(p.stat().st_size for p in target.glob("*.pt"))
        st = os.statvfs(mnt)
        used_kib = (st.f_blocks - st.f_bfree) * st.f_frsize // 1024
        assert mount("remount", f"size={used_kib + max(4, first_state // 2048)}k")  # less room than one state file
        with pytest.raises(OutputError, match="no space left on device while saving the model bundle"):
            fitted.save(target)
        assert {p.name: p.read_bytes() for p in target.iterdir()} == before, "the previous bundle was changed"
        assert [p.name for p in mnt.iterdir()] == ["model"], "temporary files left behind"
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)  # lazy: a failed test may hold a file open


# --------------------------------------------------------------------------------------------- one writer

def test_second_writer_to_the_same_out_is_refused(tiny_onnx, tmp_path):
    from icsscan.files import out_lock

    out = tmp_path / "report"
    with out_lock(out):  # another icsscan (here: this test) is writing the folder
        r = run_cli("scan", SAMPLE / "incoming", "--model", tiny_onnx, "--out", out)
        assert r.returncode == 2, r.stderr
        assert "another icsscan is writing" in one_line(r) and str(out) in r.stderr
        r = run_cli("train", SAMPLE / "good", "--out", out)
        assert r.returncode == 2 and "another icsscan" in r.stderr, r.stderr
    assert not (tmp_path / ".report.lock").exists(), "lock file left after release"
    r = run_cli("scan", SAMPLE / "incoming", "--model", tiny_onnx, "--out", out)
    assert r.returncode == 0, r.stderr


def test_lock_of_a_killed_process_is_released(tmp_path):
    from icsscan.files import out_lock

    out = tmp_path / "report"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from icsscan.files import out_lock\n"
                               "with out_lock(sys.argv[1]):\n print('held', flush=True); time.sleep(600)", str(out)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        from icsscan.files import OutputError

        with pytest.raises(OutputError, match="another icsscan"):
            with out_lock(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    with out_lock(out):  # the kernel dropped the dead holder's lock
        pass


# --------------------------------------------------------------------------------------------- exit 130

def test_interrupt_inside_exec_still_exits_130(tmp_path):
    """A KeyboardInterrupt raised in exec()'d code (dataclass/namedtuple creation does that) made `python -m`
    die of SIGINT (-2) after printing 'interrupted'; the exit status must be 130 every time."""
    (tmp_path / "exec_cli.py").write_text(
        "from icsscan import cli\n"
        "@cli.app.command()\n"
        "def boom():\n"
        "    with cli.errors_as_exit_codes():\n"
        "        exec('raise KeyboardInterrupt')\n"
        "@cli.app.command()\n"
        "def other():\n"
        "    pass\n"
        "cli.run()\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "exec_cli", "boom"], cwd=tmp_path, capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 130, (r.returncode, r.stderr)
    assert "icsscan: interrupted" in r.stderr


def test_overlay_colours_only_the_unusual_locations():
    """An overlay leaves locations no more unusual than the median normal one (map ≤ 0) as they were, paints a
    hot location red-ish, and rings the peak; a NaN in a map draws nothing and is never the peak."""
    from icsscan.maps import overlay, peak

    rgb = np.full((64, 64, 3), 120, np.uint8)
    cold = np.full((8, 8), -1.0, np.float32)
    cold[0, 0] = np.nan
    out = np.asarray(overlay(rgb, cold))
    untouched = np.all(out == 120, axis=-1)
    assert untouched.mean() > 0.9  # all but the ring around the (arbitrary) peak
    hot = cold.copy()
    hot[5:8, 5:8] = 3.0  # the top of the colour scale, over 3 x 3 map cells
    out = np.asarray(overlay(rgb, hot)).astype(int)
    r, g, b = out[52, 52]  # the centre of map cell (6, 6) in image pixels: 75 % red over grey 120
    assert r > 180 and g < 80 and b < 80, (r, g, b)
    assert np.all(out[8, 8] == 120)  # far from the hot cells: unchanged
    assert np.all(out == 255, axis=-1).sum() >= 20  # the white ring around the peak
    assert peak(hot, (64, 64)) == (44, 44)  # the first hottest cell's centre, not the NaN at (0, 0)


def test_upsample_puts_one_map_value_on_every_pixel():
    """maps.upsample: bilinear to (width, height), float32, the cells' values at their centres, no NaN out."""
    from icsscan.maps import upsample

    m = np.arange(12, dtype=np.float32).reshape(3, 4)
    up = upsample(m, (40, 30))
    assert up.shape == (30, 40) and up.dtype == np.float32
    assert up[0, 0] == pytest.approx(0.0) and up[29, 39] == pytest.approx(11.0)  # corners: the corner cells
    assert up[15, 20] == pytest.approx(5.75, abs=0.01)  # the middle: between cells 5, 6, 9, 10
    assert 0.0 <= up.min() and up.max() <= 11.0
    m[1, 1] = np.nan
    assert np.isfinite(upsample(m, (7, 5))).all()


def test_overlay_paints_a_region_at_the_models_hi_level_strongly():
    """With the model's colour range [lo, hi]: a region at hi is painted strongly enough to see at thumbnail size
    (mean change > 80 grey levels per channel), a region just above lo is clearly coloured, ≤ lo is untouched."""
    from icsscan.maps import MAP_RANGE, overlay

    rgb = np.full((80, 80, 3), 128, np.uint8)
    lo, hi = 1.5, 4.0
    m = np.full((10, 10), lo, np.float32)  # at lo: like normal parts
    m[1:4, 1:4] = hi  # a region at the hi level
    m[6:9, 6:9] = lo + 0.1 * (hi - lo)  # a region a little above lo
    out = np.asarray(overlay(rgb, m, (lo, hi))).astype(int)
    change = np.abs(out - 128)
    assert change[12:28, 12:28].mean() > 80, change[12:28, 12:28].mean(axis=(0, 1))  # hi region: cells 1..3
    r, g, b = out[20, 20]
    assert r > 180 and g < 60 and b < 60, (r, g, b)  # red
    assert change[52:68, 52:68].max(axis=-1).mean() > 40  # a little above lo: already visible
    untouched = np.all(out == 128, axis=-1)
    # between the regions (beyond the half cell that bilinear interpolation spreads them): map ≤ lo, as it was
    assert untouched[37:43, :].all() and untouched[:, 37:43].all() and untouched[:, 77:].all()
    # no model range: MAP_RANGE; a malformed one is ignored the same way
    default = np.asarray(overlay(rgb, m * 0 + MAP_RANGE[1]))
    assert np.array_equal(default, np.asarray(overlay(rgb, m * 0 + MAP_RANGE[1], (2.0, 1.0))))


def test_scan_reads_the_models_map_range_defensively():
    from icsscan.scan import parse_map_range

    assert parse_map_range("[0.5, 2]") == (0.5, 2.0)
    for bad in (None, "", "x", "[1]", "[2, 1]", "[1, 1]", '["a", 2]', "[NaN, 1]", '{"lo": 0}', "3", "[0, 1, 2]"):
        assert parse_map_range(bad) is None, bad


def test_overlay_written_on_the_original_at_its_own_size(tmp_path):
    """scan --maps: the overlay is drawn on the original re-read from disk (EXIF rotation applied, long side capped),
    not on the model's working-size pixels; an original that is gone since scoring falls back to those pixels."""
    from PIL import Image

    from icsscan.scan import MapKeeper, Row, original_pixels, write_overlay

    src = tmp_path / "wide.png"
    Image.fromarray(np.full((300, 500, 3), 90, np.uint8)).save(src)
    decoded = np.zeros((64, 96, 3), np.uint8)  # what the model saw
    m = np.zeros((8, 12), np.float32)
    m[6, 2] = 5.0
    write_overlay(str(src), decoded, m, tmp_path / "o.png")
    with Image.open(tmp_path / "o.png") as im:
        assert im.size == (2 * 500 + 4, 300)
        left = np.asarray(im.convert("RGB"))[:, :500]
    assert np.all(left == 90)  # the left half is the original's own pixels
    write_overlay(str(src), decoded, m, tmp_path / "o.jpg")  # scan --maps' default format: JPEG by the suffix
    with Image.open(tmp_path / "o.jpg") as im:
        assert im.format == "JPEG" and im.size == (2 * 500 + 4, 300)
        left = np.asarray(im.convert("RGB"))[:, :500].astype(int)
    assert np.abs(left - 90).max() <= 2  # quality 92: a flat original stays flat
    turned = tmp_path / "turned.jpg"  # stored 400 x 200, EXIF orientation 6: shown 200 wide, 400 high
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.full((200, 400, 3), 200, np.uint8)).save(turned, exif=exif)
    assert original_pixels(str(turned)).shape == (400, 200, 3)
    assert original_pixels(str(turned), max_side=100).shape == (100, 50, 3)  # huge originals: long side capped
    keeper = MapKeeper(threshold=0.5, keep=2, maps_dir=tmp_path / "maps", map_range=(0.0, 2.0))
    (tmp_path / "maps").mkdir()
    keeper(Row(str(src), 0.9), decoded, m)
    keeper(Row(str(tmp_path / "gone.png"), 0.8), decoded, m)  # deleted since it was scored
    keeper.close()
    sizes = {}
    for path, name in keeper.written.items():
        with Image.open(tmp_path / "maps" / name) as im:
            sizes[Path(path).name] = im.size
    assert sizes == {"wide.png": (1004, 300), "gone.png": (2 * 96 + 4, 64)}


def test_map_keeper_writes_every_flagged_overlay_in_the_background(tmp_path):
    """scan --maps: one complete overlay per flagged image (drawn in a writer thread; JPEG by default, PNG with
    map_format "png"), the top maps kept, and a write that fails is raised by close(), not lost."""
    from PIL import Image

    from icsscan.errors import UsageError
    from icsscan.scan import MapKeeper, Row

    rng = np.random.default_rng(0)
    keeper = MapKeeper(threshold=0.5, keep=3, maps_dir=tmp_path)
    scores = rng.random(40)
    for k, s in enumerate(scores):
        keeper(Row(f"/in/img_{k}.png", float(s)), rng.integers(0, 255, (30, 40, 3), dtype=np.uint8),
               rng.normal(size=(4, 5)).astype(np.float32))
    keeper.close()
    flagged = {f"/in/img_{k}.png" for k, s in enumerate(scores) if s >= 0.5}
    assert set(keeper.written) == flagged and len(list(tmp_path.glob("*.jpg"))) == len(flagged)
    for name in keeper.written.values():
        with Image.open(tmp_path / name) as im:
            assert im.size == (2 * 40 + 4, 30) and im.format == "JPEG"
            im.load()
    assert set(keeper.maps()) == {f"/in/img_{k}.png" for k in np.argsort(scores)[-3:]}
    lossless = MapKeeper(threshold=0.0, keep=1, maps_dir=tmp_path / "png", map_format="png")
    (tmp_path / "png").mkdir()
    rgb = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    lossless(Row("/in/a.png", 0.9), rgb, rng.normal(size=(4, 5)).astype(np.float32))
    lossless.close()
    with Image.open(tmp_path / "png" / lossless.written["/in/a.png"]) as im:
        assert im.format == "PNG" and np.array_equal(np.asarray(im.convert("RGB"))[:, :40], rgb)  # lossless
    with pytest.raises(UsageError, match="--map-format"):
        MapKeeper(threshold=0.5, map_format="gif")

    broken = MapKeeper(threshold=0.0, keep=1, maps_dir=tmp_path / "gone")  # the folder does not exist
    broken(Row("/in/a.png", 0.9), np.zeros((8, 8, 3), np.uint8), np.zeros((2, 2), np.float32))
    with pytest.raises(OSError):
        broken.close()
    assert broken.written == {}
