"""report.html: a real scan of Fashion-MNIST PNGs (hostile file names, one corrupt file), checked by parsing
the page and by rendering it in headless Chromium (skipped only when no Chromium is installed)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from html import escape
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from PIL import Image

from conftest import mnist, run_cli, save_onnx, write_pngs

# Names that break naive HTML or URLs: spaces, fragment and percent signs (%41 must not become "A"),
# quotes, markup, non-ASCII.
ODD_NAMES = ["with space.png", "hash#1.png", "pct%41 100%.png", "quote\"s and 'single'.png",
             "ünïcødé é.png", "日本語.png", 'x"><b>bold<b>.png']  # ("/" cannot occur in a name)
CORRUPT = "corrupt #file.png"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Flags that keep a headless run offline, quiet and independent of any existing profile.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                  "--hide-scrollbars"]


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs: list[str] = []
        self.hrefs: list[str] = []
        self.svg_ids: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a["src"])
        elif tag == "a":
            self.hrefs.append(a["href"])
        elif tag == "svg":
            self.svg_ids.append(a.get("id", ""))


def parse(page: Path) -> Links:
    links = Links()
    links.feed(page.read_text(encoding="utf-8"))
    return links


def local_target(report: Path, url: str) -> Path:
    """The file a src/href in report.html points at (relative or file://), percent-decoding applied."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    assert parsed.scheme == "" and not parsed.netloc, url
    return report / unquote(url)


def brightness_model(path: Path, calibration: np.ndarray) -> Path:
    """A real icsscan ONNX model whose score is the mean pixel value: scans go through the real CLI, decoding
    and onnxruntime in a second or two, where training even a tiny model takes minutes on a busy CPU."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["pixels"], ["score"], axes=[1, 2, 3], keepdims=0)], "brightness",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    meta = {"icsscan_version": "test", "image_size": "28", "channels": "1", "score": "brightness",
            "default_threshold": str(float(np.quantile(calibration, 0.95))),
            "calibration": json.dumps({"scores": sorted(map(float, calibration))})}
    return save_onnx(model, meta, path)


@pytest.fixture(scope="module")
def scanned(tmp_path_factory) -> dict:
    """100 Fashion-MNIST test PNGs (7 with odd names) plus a corrupt file, scanned by the CLI; plus a second
    report of the same scan, written through the library with every image in a grid."""
    from icsscan.html import write_html_report
    from icsscan.report import ranked
    from icsscan.scan import scan_folder

    x, _ = mnist("FashionMNIST", False)
    x_train, y_train = mnist("FashionMNIST", True)
    root = tmp_path_factory.mktemp("html")
    sneakers = x_train[y_train == 7][:200]  # the "normal" class: calibration = their brightness
    model = brightness_model(root / "model.onnx", sneakers.reshape(len(sneakers), -1).mean(1) / 255.0)
    folder = root / "in"
    paths = write_pngs(folder, x[:100], "fm")
    for p, name in zip(paths, ODD_NAMES):
        p.rename(folder / name)
    (folder / CORRUPT).write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = root / "report"
    proc = run_cli("scan", folder, "--model", model, "--out", out, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = scan_folder(folder, model)
    full = root / "full"
    full.mkdir()
    write_html_report(result, ranked(result), full, top_k=60)  # 60 + 40: every scored image on the page
    return {"root": root, "folder": folder, "out": out, "full": full, "model": model}


def test_report_html_images_resolve_and_sections_present(scanned):
    out = scanned["out"]
    page = out / "report.html"
    text = page.read_text(encoding="utf-8")
    links = parse(page)
    assert len(links.imgs) >= 20
    assert len(links.imgs) == 48  # 24 most anomalous + 24 most normal
    for src in links.imgs:
        target = local_target(out, src).resolve()
        assert target.is_file(), src
        assert target.is_relative_to(out.resolve()), src
        with Image.open(target) as im:
            assert max(im.size) <= 128
    assert "score-histogram" in links.svg_ids
    assert 'class="threshold"' in text and "calibration normals" in text
    assert "Unreadable files (1)" in text and "corrupt #file.png" in text
    assert "not a recognised image format" in text
    assert "<script" not in text.lower() and "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    assert "<b>bold" not in text  # file names are text, never markup


def test_every_name_escaped_and_linked(scanned):
    full, folder = scanned["full"], scanned["folder"]
    text = (full / "report.html").read_text(encoding="utf-8")
    links = parse(full / "report.html")
    assert len(links.imgs) == 100  # every readable image
    originals = {local_target(full, h) for h in links.hrefs if h.startswith("file:")}
    assert originals == {p for p in folder.iterdir() if p.name != CORRUPT}  # every link resolves, names intact
    for name in ODD_NAMES:
        assert escape(str(folder / name)) in text
    assert "<b>bold" not in text


def test_nothing_written_outside_report_dir(scanned, tmp_path):
    """A thumbs/ symlink planted in the report folder is replaced, not followed; broken inputs cost a preview."""
    from icsscan.html import make_thumbnail, write_html_report
    from icsscan.report import ranked
    from icsscan.scan import Row, ScanResult

    outside, out = tmp_path / "outside", tmp_path / "report"
    outside.mkdir()
    out.mkdir()
    (out / "thumbs").symlink_to(outside, target_is_directory=True)
    src = next(scanned["folder"].glob("fm_*.png"))
    model = _model_stub()
    rows = [Row(str(src), 0.9), Row(str(tmp_path / "vanished.png"), 0.8), Row(str(tmp_path / "../x.png"), 0.1)]
    result = ScanResult(rows, 0.5, "raw", "flag at 0.5", model, 3, 0.1)
    write_html_report(result, ranked(result), out)
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in (out / "thumbs").iterdir()) == ["000001.png"]
    assert (out / "report.html").read_text(encoding="utf-8").count("no preview") == 2
    assert not make_thumbnail(str(scanned["folder"] / CORRUPT), tmp_path / "t.png")


def test_map_thumbnails_link_to_full_size_overlays(tmp_path):
    """With anomaly maps, both pictures of a card link (relative, escaped) to the full-size overlay: the scan's
    maps/NAME when scan --maps wrote it, else overlays/RANK.png written for the card; the path links the original."""
    from icsscan.html import write_html_report
    from icsscan.report import ranked
    from icsscan.scan import Row, ScanResult

    folder, out = tmp_path / "in", tmp_path / "report"
    folder.mkdir()
    (out / "maps").mkdir(parents=True)
    sizes = {"a b#1.png": (300, 200), 'q"uote.png': (160, 240), "c.png": (90, 90)}
    rows, maps = [], {}
    for k, (name, (w, h)) in enumerate(sizes.items()):
        Image.fromarray(np.full((h, w), 100, np.uint8)).save(folder / name)
        rows.append(Row(str(folder / name), 0.9 - 0.1 * k, peak_x=1, peak_y=1))
        maps[str(folder / name)] = np.eye(4, dtype=np.float32) * 3
    (out / "maps" / "000001_a_b_1.png").write_bytes(b"written by scan --maps")
    model = _model_stub()
    model.map_range = (0.0, 2.0)
    result = ScanResult(rows, 0.5, "raw", "flag at 0.5", model, 3, 0.1, maps=maps,
                        overlays={str(folder / "a b#1.png"): "000001_a_b_1.png"})
    write_html_report(result, ranked(result), out)
    text = (out / "report.html").read_text(encoding="utf-8")
    heat_links = re.findall(r'<a href="([^"]+)"[^>]*><img class="heat"', text)
    image_links = re.findall(r'<a href="([^"]+)"><img src="thumbs/\d{6}\.png"', text)
    assert heat_links == ["maps/000001_a_b_1.png", "overlays/000002.png", "overlays/000003.png"]
    assert image_links[:3] == heat_links
    for href, (w, h) in zip(heat_links[1:], list(sizes.values())[1:]):
        with Image.open(local_target(out, href)) as im:
            assert im.size == (2 * w + 4, h)  # original | overlay, at the original's size
    assert all(local_target(out, h).is_file() for h in heat_links)
    originals = {local_target(out, h) for h in parse(out / "report.html").hrefs if h.startswith("file:")}
    assert originals == {folder / name for name in sizes}  # the caption's path still opens the original
    assert escape(str(folder / 'q"uote.png')) in text
    every = {str(folder / name): f"00000{k}_x.png" for k, name in enumerate(sizes)}  # scan --maps drew them all
    for name in every.values():
        (out / "maps" / name).write_bytes(b"png")
    result.overlays = every
    write_html_report(result, ranked(result), out)
    assert not (out / "overlays").exists()  # an earlier run's overlays/ is cleared, no empty folder stays


def test_no_html_flag(scanned, tmp_path):
    out = tmp_path / "r"
    proc = run_cli("scan", scanned["folder"], "--model", scanned["model"], "--out", out, "--no-html", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (out / "scores.csv").exists() and not (out / "report.html").exists() and not (out / "thumbs").exists()


def test_html_module_imports_no_torch_or_matplotlib():
    code = "import sys, icsscan.html; bad = {'torch', 'matplotlib'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --------------------------------------------------------------------------------------------- browser

def _model_stub():
    from icsscan.scan import ScanModel

    return ScanModel(Path("m.onnx"), None, 28, 1, 0.5, np.array([0.1, 0.2, 0.3]), "ics", "0" * 64, {})


def chromium(args: list[str], tmp: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run headless Chromium with a fresh profile; on timeout kill its whole process group and fail."""
    profile = tempfile.mkdtemp(prefix="profile-", dir=tmp)
    proc = subprocess.Popen([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium did not finish within {timeout} s")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make browser, or apt-get install chromium)")
def test_report_renders_in_headless_chromium(scanned, tmp_path):
    full = scanned["full"]
    page = full / "report.html"

    shot = tmp_path / "shot.png"
    proc = chromium(["--window-size=1200,1600", f"--screenshot={shot}", page.as_uri()], tmp_path)
    assert shot.exists(), proc.stderr[-2000:]
    with Image.open(shot) as im:
        rgb = im.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20)
        non_white = sum(n for n, c in colours if c != (255, 255, 255)) / (rgb.width * rgb.height)
    assert len(colours) > 50 and non_white > 0.05, (len(colours), non_white)

    # A copy beside the original (same relative thumbs/) that counts loaded images; the report itself has
    # no scripts and forbids them, so only the copy's CSP is relaxed to let this one inline script run.
    probe = ("<script>addEventListener('load', () => { const imgs = [...document.images];"
             " document.body.dataset.imagesTotal = imgs.length;"
             " document.body.dataset.imagesOk = imgs.filter(i => i.complete && i.naturalWidth > 0).length; });"
             "</script></body>")
    text = page.read_text(encoding="utf-8")
    assert "script-src 'none'" in text
    check = full / "_browser_check.html"
    check.write_text(text.replace("script-src 'none'", "script-src 'unsafe-inline'").replace("</body>", probe),
                     encoding="utf-8")
    proc = chromium(["--virtual-time-budget=10000", "--dump-dom", check.as_uri()], tmp_path)
    total = re.search(r'data-images-total="(\d+)"', proc.stdout)
    ok = re.search(r'data-images-ok="(\d+)"', proc.stdout)
    assert total and ok, proc.stdout[-1000:] + proc.stderr[-2000:]
    assert int(total.group(1)) == len(parse(page).imgs) == 100
    assert int(ok.group(1)) == int(total.group(1))
