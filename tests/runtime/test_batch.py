"""Folder runs of ``onnxcam explain``: paths, batching, summary, exit codes, resume, overwrite,
atomic outputs (a run killed with SIGKILL leaves only complete files)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import make_tiny_cnn
from onnx_corpus import make_cnn
from PIL import Image

from explainer import Explainer, OutputError, Preprocessing
from explainer.batch import FolderRun, RunOptions, explain_batch
from explainer.cli import main
from explainer.inputs import collect_images, output_names
from explainer.outputs import TEMP_SUFFIX, atomic_write, save_json
from exporters import build_bundle

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("model") / "model.onnx"
    onnx.save(make_cnn("NCHW"), path)
    return str(path)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, model) -> str:
    path = tmp_path_factory.mktemp("bundle") / "bundle"
    assert main(["export", model, "-o", str(path)]) == 0
    return str(path)


def _image(path: Path, size=(40, 48), seed: int = 0, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


@pytest.fixture
def tree(tmp_path) -> Path:
    """photos/{a,b}/x.png (same stem), photos/a/x.jpg (same stem, other suffix),
    photos/a/deep/y.png (only found with --recursive), photos/a/broken.png (not an image)."""
    root = tmp_path / "photos"
    _image(root / "a" / "x.png", (40, 48), 1)
    _image(root / "a" / "x.jpg", (64, 40), 2)
    _image(root / "b" / "x.png", (33, 70), 3)
    _image(root / "a" / "deep" / "y.png", (50, 50), 4)
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "a" / "notes.txt").write_text("not scanned")
    return root


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_folders_globs_and_unique_names(tree, tmp_path):
    flat = collect_images([tree / "a"])
    assert [p.name for p in flat] == ["broken.png", "x.jpg", "x.png"]
    deep = collect_images([tree], recursive=True)
    assert len(deep) == 5 and all(p.suffix != ".txt" for p in deep)
    globbed = collect_images([str(tree / "*" / "x.png")])
    assert [p.parent.name for p in globbed] == ["a", "b"]
    assert collect_images([str(tree / "**" / "*.png")], recursive=True)[-1].name == "x.png"
    assert collect_images([tree / "a" / "x.png", tree / "a"])[0].name == "x.png"  # no repeats
    _image(tree / "out" / "x_cam.png")  # an output folder inside the scanned one is skipped
    assert collect_images([tree], recursive=True, exclude=tree / "out") == deep
    names = output_names(deep)
    assert len(set(names.values())) == len(deep)
    assert names[(tree / "a" / "x.jpg").resolve()] == "a/x"
    assert names[(tree / "a" / "x.png").resolve()] == "a/x_png"
    assert names[(tree / "b" / "x.png").resolve()] == "b/x"
    with pytest.raises(Exception, match="no such file or folder"):
        collect_images([tmp_path / "missing"])
    with pytest.raises(Exception, match="no file matches"):
        collect_images([str(tmp_path / "*.nothing")])


def test_folder_run_summary_exit_code_and_report(tree, tmp_path, model, capsys):
    out = tmp_path / "out"
    code = main(["explain", model, str(tree), "--recursive", "--top-k", "2", "--batch-size",
                 "3", "--save-npy", "--out", str(out), "--colormap", "viridis", "--alpha", "0.3"])
    assert code == 1  # one image is broken; the rest were written
    captured = capsys.readouterr()
    assert "failed:" in captured.out and "broken.png" in captured.out
    assert "\r" not in captured.err  # no progress bar when stderr is not a terminal
    summary = _summary(out)
    assert summary["counts"] == {"ok": 4, "error": 1, "pending": 0}
    assert summary["targets"] == "top2" and summary["target"]["tensor"] == "features"
    rows = {Path(row["image"]).relative_to(tree.resolve()).as_posix(): row
            for row in summary["images"]}
    assert rows["a/broken.png"]["error"]["type"] == "ImageError"
    assert rows["a/broken.png"]["overlay"] is None
    overlays = {row["overlay"] for row in rows.values() if row["status"] == "ok"}
    assert overlays == {"a/x_cam.png", "a/x_png_cam.png", "b/x_cam.png", "a/deep/y_cam.png"}
    for row in rows.values():
        if row["status"] != "ok":
            continue
        assert len(row["class_ids"]) == 2 and row["probabilities"][0] >= row["probabilities"][1]
        heatmaps = np.load(out / row["heatmaps"])
        assert heatmaps.shape == (2, 32, 32) and heatmaps.dtype == np.float32
        assert 0 <= heatmaps.min() and heatmaps.max() <= 1
        with Image.open(out / row["overlay"]) as img:
            img.load()
    # all images succeeded -> 0
    assert main(["explain", model, str(tree / "b"), "--quiet", "--out", str(tmp_path / "o2")]) == 0


def test_batches_match_single_images_and_mixed_sizes(tree, bundle):
    explainer = Explainer(bundle)
    paths = collect_images([tree], recursive=True)
    batched = explain_batch(explainer, paths, RunOptions(targets="top2"))
    assert [r.error is not None for r in batched] == [p.name == "broken.png" for p in paths]
    for path, result in zip(paths, batched):
        if result.error is None:
            single = explainer.explain(explainer.preprocess([path]), targets="top2")
            np.testing.assert_allclose(result.explanation.heatmaps[result.index],
                                       single.heatmaps[0], atol=1e-5)


def test_sizes_that_differ_after_preprocessing_batch_separately(tree, tmp_path):
    """A model of any input size, preprocessing without a crop: each preprocessed shape is
    its own batch."""
    model = make_tiny_cnn()
    for axis in (2, 3):
        model.graph.input[0].type.tensor_type.shape.dim[axis].dim_param = "hw"[axis - 2]
    explainer = Explainer(build_bundle(model, "r3", preprocessing=Preprocessing(resize=32,
                                                                                  crop=None)))
    paths = collect_images([tree], recursive=True)[1:] + [_image(tmp_path / "c.png", (40, 48))]
    results = explain_batch(explainer, paths, RunOptions(batch_size=8))
    assert all(r.error is None for r in results)
    shapes = [r.explanation.heatmaps.shape for r in results]
    assert len({s[2:] for s in shapes}) == 4  # 40x48 -> 32x38, 64x40 -> 51x32, ...
    assert sorted(s[0] for s in shapes) == [1, 1, 1, 2, 2]  # the two 40x48 images together


def test_existing_outputs_need_overwrite_or_resume(tree, tmp_path, model, capsys):
    out = tmp_path / "out"
    args = ["explain", model, str(tree / "b"), "--out", str(out)]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "--overwrite" in err and str(out) in err
    assert main([*args, "--overwrite"]) == 0
    # an output that would replace an input image is refused, even with --overwrite
    _image(tree / "b" / "x_cam.png")
    code = main(["explain", model, str(tree / "b"), "--out", str(tree / "b"), "--overwrite"])
    assert code == 2 and "would overwrite an input" in capsys.readouterr().err


def test_resume_skips_done_images(tree, tmp_path, bundle, model):
    out = tmp_path / "out"
    images = collect_images([tree], recursive=True)
    assert main(["explain", model, str(tree), "--recursive", "--out", str(out), "--quiet"]) == 1
    first = _summary(out)
    done = out / "a" / "x_cam.png"
    stamp = done.stat().st_mtime_ns
    os.remove(out / "b" / "x_cam.png")  # lost output: redone
    run = FolderRun(Explainer(bundle), images, out, RunOptions(resume=True))
    assert sorted(p.name for p in run.pending) == ["broken.png", "x.png"]
    assert main(["explain", model, str(tree), "--recursive", "--out", str(out), "--resume",
                 "--quiet"]) == 1
    assert done.stat().st_mtime_ns == stamp and (out / "b" / "x_cam.png").is_file()
    assert _summary(out)["images"] == first["images"]
    with pytest.raises(OutputError, match="targets"):  # other settings: no silent mix
        FolderRun(Explainer(bundle), images, out, RunOptions(resume=True, top_k=2))


def test_max_pixels_is_passed_to_image_loading(tree, tmp_path, model):
    _image(tree / "big" / "big.png", (300, 300))
    _image(tree / "big" / "small.png", (20, 20))
    out = tmp_path / "out"
    code = main(["explain", model, str(tree / "big"), "--max-pixels", "10000", "--out", str(out)])
    assert code == 1
    rows = {Path(r["image"]).name: r for r in _summary(out)["images"]}
    assert rows["small.png"]["status"] == "ok"
    message = rows["big.png"]["error"]["message"]
    assert "300x300" in message and "10,000" in message and "--max-pixels" in message


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = save_json({"a": 1}, tmp_path / "x.json")

    def fail(file):
        file.write(b"{half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(path, fail)
    assert json.loads(path.read_text()) == {"a": 1}
    assert not list(tmp_path.glob(f"*{TEMP_SUFFIX}"))


KILLED_RUN = """
import sys
from explainer.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_run_leaves_only_complete_files(tmp_path, model):
    """SIGKILL a folder run mid-way: every PNG/JSON/NPY present loads; --resume finishes it."""
    folder = tmp_path / "many"
    for i in range(60):
        _image(folder / f"img{i:03d}.png", (96, 96), i)
    out = tmp_path / "out"
    args = ["explain", model, str(folder), "--batch-size", "1", "--save-npy", "--out", str(out),
            "--quiet"]
    process = subprocess.Popen([sys.executable, "-c", KILLED_RUN, *args], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out.rglob("*_cam.png"))) < 10:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    pngs = list(out.rglob("*.png"))
    assert 10 <= len(pngs) < 60, "the run was not killed mid-way"
    for png in pngs:
        with Image.open(png) as img:
            img.load()
    for npy in out.rglob("*.npy"):
        assert np.load(npy).shape == (1, 32, 32)
    summary = _summary(out)  # complete JSON
    assert summary["counts"]["ok"] <= len(pngs)
    assert main([*args, "--resume"]) == 0
    assert _summary(out)["counts"] == {"ok": 60, "error": 0, "pending": 0}
    assert not list(out.rglob(f"*{TEMP_SUFFIX}"))


def test_progress_bar_on_a_terminal_only(tree, tmp_path, model):
    """stderr on a pseudo-terminal: a tqdm bar, no per-image lines; --quiet: no bar."""
    import fcntl
    import pty
    import struct
    import termios

    def run(*extra: str) -> str:
        leader, follower = pty.openpty()
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        args = ["explain", model, str(tree / "a" / "x.png"), str(tree / "b"), "--out",
                str(tmp_path / "out"), "--overwrite", *extra]
        subprocess.run([sys.executable, "-c", KILLED_RUN, *args], cwd=ROOT, stderr=follower,
                       stdout=subprocess.DEVNULL, check=True)
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(leader)
        return b"".join(chunks).decode(errors="replace")

    assert "2/2" in run() and "img" in run()
    assert "2/2" not in run("--quiet")


def test_run_options_check_names_bad_values():
    from explainer import TargetError, UsageError

    with pytest.raises(TargetError, match=r"'prob'.*'logit', 'probability'"):
        RunOptions(score="prob").check(10)
    with pytest.raises(UsageError, match=r"'median'.*'mean', 'max'"):
        RunOptions(fuse="median").check(10)
    with pytest.raises(TargetError, match="3 classes per image for 2 targets"):
        RunOptions(top_k=2, contrast="top3").check(10)
    with pytest.raises(TargetError, match="out of range"):
        RunOptions(contrast=12).check(10)
    for contrast in ("least", 3, "top2"):  # one contrast class, or one per target
        RunOptions(top_k=2, contrast=contrast, score="probability", fuse=None).check(10)


@pytest.fixture(scope="module")
def guided_sweep(tmp_path_factory, model) -> str:
    """A layer sweep (relu_8, features) with the input-gradient graph."""
    path = tmp_path_factory.mktemp("guided_sweep") / "bundle"
    assert main(["export", model, "--layer", "relu_8", "--layer", "features",
                 "--input-gradient", "-o", str(path)]) == 0
    return str(path)


def test_resume_and_overwrite_know_layer_and_pixel_outputs(tree, tmp_path, guided_sweep, capsys):
    out = tmp_path / "out"
    paths = [tree / "a" / "x.png", tree / "b" / "x.png"]
    options = dict(top_k=2, method="guided-backprop", contrast="least", fuse="max",
                   save_npy=True)
    args = ["explain", guided_sweep, *map(str, paths), "--top-k", "2", "--method",
            "guided-backprop", "--contrast", "least", "--fuse", "max", "--save-npy", "--quiet",
            "--out", str(out)]
    assert main(args) == 0
    summary = _summary(out)
    assert (summary["contrast"], summary["score"], summary["fuse"]) == ("least", "logit", "max")
    assert summary["layers"] == ["relu_8_node", "features_node"]
    rows = {Path(row["image"]).parent.name: row for row in summary["images"]}
    assert rows["a"]["pixels"] == ["a/x_pixels_0.png", "a/x_pixels_1.png"]
    assert rows["b"]["layers"] == {"relu_8_node": "b/x_cam_relu_8_node.png",
                                   "features_node": "b/x_cam_features_node.png"}
    images = collect_images(paths)

    def pending(**changes) -> list[str]:
        run = FolderRun(Explainer(guided_sweep), images, out,
                        RunOptions(resume=True, **{**options, **changes}))
        return [p.parent.name for p in run.pending]

    assert pending() == []
    os.remove(out / "a" / "x_pixels_1.png")  # a lost pixel map: that image is redone
    os.remove(out / "b" / "x_cam_features_node.png")  # a lost layer overlay: redone
    assert pending() == ["a", "b"]
    assert main([*args, "--resume"]) == 0
    assert pending() == [] and _summary(out)["images"] == summary["images"]
    os.remove(out / "b" / "x_pixels.npy")
    assert pending() == ["b"] and pending(save_npy=False) == []
    for key, value in (("score", "probability"), ("fuse", "mean"), ("contrast", None),
                       ("method", "guided-gradcam")):
        with pytest.raises(OutputError, match=f"written with {key} "):
            pending(**{key: value})
    # without --overwrite, an existing pixel map is refused like any other output
    capsys.readouterr()
    for file in [out / "summary.json", *out.rglob("*_cam*")]:
        os.remove(file)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "_pixels" in err and "exists" in err and "--overwrite" in err
    assert main([*args, "--overwrite"]) == 0


def test_resume_accepts_a_summary_from_before_contrast_score_and_fuse(tree, tmp_path, bundle):
    out = tmp_path / "out"
    images = collect_images([tree / "b"])
    FolderRun(Explainer(bundle), images, out, RunOptions()).run()
    summary = _summary(out)
    for key in ("layers", "contrast", "score", "fuse"):
        del summary[key]
    save_json(summary, out / "summary.json")
    assert FolderRun(Explainer(bundle), images, out, RunOptions(resume=True)).pending == []
    with pytest.raises(OutputError, match="score"):
        FolderRun(Explainer(bundle), images, out, RunOptions(resume=True, score="probability"))
