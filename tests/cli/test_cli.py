"""The onnxcam command: explain / export / inspect / check on the ONNX corpus (no torch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx_corpus import CORPUS, SIZE, make_cnn
from PIL import Image
from torchless import ASSERT_NO_TORCH, BLOCK_TORCH

from explainer.cli import main

ROOT = Path(__file__).resolve().parents[2]

# Runs the CLI with torch made unimportable, then asserts it was never imported.
NO_TORCH = BLOCK_TORCH + """
from explainer.cli import main
code = main(sys.argv[1:])
""" + ASSERT_NO_TORCH + """
sys.exit(code)
"""


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(48, 64), (40, 40)]):
        path = folder / f"image{i}.png"
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def _save(model: onnx.ModelProto, folder: Path, name: str = "model") -> str:
    path = folder / f"{name}.onnx"
    onnx.save(model, path)
    return str(path)


@pytest.mark.parametrize("name", list(CORPUS))
def test_explain_onnx_file_writes_overlays_and_summary(name, tmp_path, images, capsys):
    model = _save(CORPUS[name][0](), tmp_path)
    out = tmp_path / "out"
    code = main(["explain", model, *images, "--layer", "auto", "--top-k", "3", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "explaining 'features'" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["target"]["tensor"] == "features" and summary["counts"]["ok"] == 2
    assert [row["image"] for row in summary["images"]] == images
    for row in summary["images"]:
        assert row["status"] == "ok" and len(row["class_ids"]) == 3
        assert np.all(np.diff(row["scores"]) <= 0)
        with Image.open(out / row["overlay"]) as overlay:
            assert overlay.size[0] > SIZE


def test_export_then_explain_and_check_the_bundle(tmp_path, images, capsys):
    model = _save(make_cnn("NHWC", softmax=True), tmp_path)
    bundle = tmp_path / "bundle"
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"class {i}" for i in range(10)) + "\n")
    assert main(["export", model, "--labels", str(labels), "-o", str(bundle)]) == 0
    printed = capsys.readouterr().out
    assert "'features'" in printed and "pre-softmax logits 'logits'" in printed
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["labels"][3] == "class 3" and manifest["target"]["layout"] == "NHWC"

    assert main(["explain", str(bundle), images[0], "--targets", "top2+least",
                 "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["images"]
    assert len(summary[0]["labels"]) == 3 and summary[0]["labels"][0].startswith("class ")

    capsys.readouterr()
    assert main(["check", str(bundle), "--images", *images]) == 0
    assert "PASS" in capsys.readouterr().out


def test_export_with_target_and_layout(tmp_path, capsys):
    model = _save(make_cnn("NCHW"), tmp_path)
    bundle = tmp_path / "b"
    assert main(["export", model, "--layer", "maxpool_18", "--layout", "NCHW",
                 "-o", str(bundle)]) == 0
    assert json.loads((bundle / "manifest.json").read_text())["target"]["tensor"] == "maxpool_18"



def test_target_is_a_deprecated_alias_of_layer(tmp_path, capsys):
    """``--target`` still sets the layer (mixed with ``--layer`` too) and notes once that it
    is deprecated; ``--layer`` prints no note."""
    model = _save(make_cnn("NCHW"), tmp_path)
    assert main(["export", model, "--target", "relu_8", "--layer", "features", "--target",
                 "maxpool_18", "-o", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err.splitlines()
    notes = [line for line in err if "--target is deprecated" in line]
    assert len(notes) == 1 and "--layer" in notes[0]
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert {layer["tensor"] for layer in manifest["layers"]} == {"relu_8", "features",
                                                                 "maxpool_18"}
    assert main(["export", model, "--layer", "maxpool_18", "-o", str(tmp_path / "b")]) == 0
    assert "deprecated" not in capsys.readouterr().err
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["target"]["tensor"] == \
        "maxpool_18"


def test_layer_is_in_every_model_command_help():
    from explainer.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    for name in ("explain", "export", "check"):
        flags = {flag for action in commands[name]._actions for flag in action.option_strings}
        assert {"--layer", "--target"} <= flags, name
    assert "--layer" in commands["explain"].format_help()


def test_messages_name_the_layer_flag():
    from explainer.cli import cli_message

    assert cli_message("pass target= and layout= explicitly") == \
        "pass --layer and --layout explicitly"
    # a message naming the former flag gets the flag's name now, and keeps its Python name
    assert cli_message("pass --target (target=)") == "pass --layer (target=)"
    assert cli_message("choose --targets top3") == "choose --targets top3"


def test_the_task_line_is_printed_once(tmp_path, capsys):
    from explainer.cli_commands import _task_text

    model = _save(make_cnn("NCHW"), tmp_path)
    assert main(["inspect", model]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if line.startswith("task:")] == ["task: classify"]
    fmt = {"name": "yolov8", "classes": 80, "outputs": {"predictions": "output0"},
           "explained": "logits"}
    assert _task_text("detect", fmt) == ("task: detect, format yolov8 (80 classes; outputs "
                                         "{'predictions': 'output0'}), explaining the logits")
    assert _task_text("detect", fmt, "logits_t").endswith("explaining 'logits_t' (the logits)")



def test_verbose_export_and_inspect_do_not_log_the_task_line_they_print(tmp_path, caplog):
    import logging

    from explainer.cli import without_task_log

    def record(name: str, level: int, msg: str) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, msg, ("detect", "yolov8"), None)

    assert not without_task_log(record("exporters.onnx_frontend.tasks", logging.INFO,
                                       "task %s, format %s"))
    assert without_task_log(record("exporters.onnx_frontend.tasks", logging.WARNING,
                                   "task %s, format %s"))
    assert without_task_log(record("exporters.build", logging.INFO, "bundle: target %s %s"))
    # the filter is on the handlers while the command runs, and removed after
    handler = logging.getLogger().handlers[0] if logging.getLogger().handlers else None
    model = _save(make_cnn("NCHW"), tmp_path)
    with caplog.at_level(logging.INFO):
        assert main(["-v", "export", model, "-o", str(tmp_path / "b")]) == 0
    assert "auto target" in caplog.text  # the exporters' other INFO lines are kept
    if handler is not None:
        assert without_task_log not in handler.filters


def test_inspect_prints_the_candidate_table(tmp_path, capsys):
    model = _save(make_cnn("NHWC"), tmp_path)
    assert main(["inspect", model]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["tensor", "shape", "node"]
    picked = [line for line in lines if line.startswith("*")]
    assert len(picked) == 1 and "features" in picked[0] and "NHWC" in picked[0]
    assert lines[-1] == "auto target: 'features' (Relu node features_node)"
    assert any(" no " in line for line in lines[1:])  # the residual branch is not a clean cut

    assert main(["inspect", model, "--last", "3"]) == 0
    assert "showing the last 3" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["static_batch", "uint8_nhwc", "multi_output"])
def test_check_onnx_file(name, tmp_path, capsys):
    model = _save(CORPUS[name][0](), tmp_path)
    assert main(["check", model, "--directions", "2"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "gradient check of 'features'" in out


def test_check_fails_with_exit_code_1(tmp_path, capsys):
    model = _save(make_cnn("NCHW"), tmp_path)
    # a tolerance nothing meets
    assert main(["check", model, "--tolerance", "0", "--layer", "relu_8"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_errors_are_reported_with_exit_code_2(tmp_path, images, capsys):
    model = _save(make_cnn("NCHW"), tmp_path)
    assert main(["explain", model, images[0], "--layer", "nope"]) == 2
    assert "neither a tensor nor a node" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "missing.onnx")]) == 2
    assert "no such ONNX file" in capsys.readouterr().err
    assert main(["export", model, "--output", "scores", "-o", str(tmp_path / "b")]) == 2
    assert "not an output" in capsys.readouterr().err


@pytest.mark.parametrize("command", [[], ["explain"], ["export"], ["inspect"], ["check"]])
def test_help_shows_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "onnxcam " in text


def test_cli_runs_with_torch_unimportable(tmp_path, images):
    model = _save(make_cnn("NHWC", uint8=True, softmax=True), tmp_path)
    out = tmp_path / "out"
    for args in (
        ["inspect", model],
        ["explain", model, *images, "--top-k", "2", "--out", str(out)],
        ["export", model, "-o", str(tmp_path / "bundle")],
        ["check", str(tmp_path / "bundle"), "--directions", "1"],
    ):
        result = subprocess.run([sys.executable, "-c", NO_TORCH, *args], cwd=ROOT,
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    assert (out / "summary.json").is_file()


def test_module_entry_point(tmp_path, images):
    model = _save(make_cnn("NCHW"), tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "explainer.cli", "explain", model, images[1], "--out",
         str(tmp_path / "o")],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "o" / "image1_cam.png").is_file()


def test_wrong_label_count_is_one_line_exit_2_before_any_graph_is_built(tmp_path, monkeypatch):
    """`onnxcam export model.onnx --labels wrong_count.txt` stops before the split and the
    gradient graph, prints one line, exits 2, no traceback."""
    import exporters.build

    def no_graph(*args, **kwargs):
        raise AssertionError("a graph was built")

    monkeypatch.setattr(exporters.build, "split_model", no_graph)
    model = _save(make_cnn("NCHW"), tmp_path)
    labels = tmp_path / "wrong_count.txt"
    labels.write_text("cat\ndog\nbird\n")
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from explainer.cli import main; "
         "sys.exit(main(sys.argv[1:]))", "export", model, "--labels", str(labels), "-o",
         str(tmp_path / "out")],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "3 names" in lines[0] and "classes" in lines[0]
    assert not (tmp_path / "out").exists()
    # in-process, the same error stops before split_model is reached
    assert main(["export", model, "--labels", str(labels), "-o", str(tmp_path / "out")]) == 2


@pytest.mark.parametrize("argv, code, words", [
    (["explain", "missing.onnx", "{image}"], 2, "no such ONNX file"),
    (["inspect", "missing.onnx"], 2, "no such ONNX file"),
    (["explain", "{model}", "{image}", "--targets", "top0"], 2, "k must be between"),
    (["explain", "{model}", "{image}", "--labels", "klingon"], 2, "unknown label set"),
])
def test_errors_are_one_line_with_their_exit_code(argv, code, words, tmp_path, images, capsys):
    model = _save(make_cnn("NCHW"), tmp_path)
    argv = [a.format(model=model, image=images[0]) for a in argv]
    out = ["--out", str(tmp_path / "o")] if argv[0] == "explain" else []
    assert main([*argv, *out]) == code
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if not line.startswith("note: ")]
    assert len(errors) == 1 and errors[0].startswith("error: ") and words in errors[0], stderr


# --- contrast, score, layer sweeps (--layer repeated, --fuse), pixel maps ----------------------

SWEEP = ["relu_8", "features"]  # two layers at different resolutions (16x16, 8x8)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> str:
    return _save(make_cnn("NCHW"), tmp_path_factory.mktemp("cnn"))


@pytest.fixture(scope="module")
def guided_bundle(tmp_path_factory, cnn) -> str:
    """A one-layer bundle of the corpus CNN with the input-gradient graph."""
    path = tmp_path_factory.mktemp("guided") / "bundle"
    assert main(["export", cnn, "--input-gradient", "-o", str(path)]) == 0
    return str(path)


@pytest.fixture(scope="module")
def sweep_bundle(tmp_path_factory, cnn) -> str:
    """A layer-sweep bundle (relu_8 and features) of the corpus CNN."""
    path = tmp_path_factory.mktemp("sweep") / "bundle"
    assert main(["export", cnn, "--layer", SWEEP[0], "--layer", SWEEP[1], "-o", str(path)]) == 0
    return str(path)


def _run(model: str, images: list[str], out: Path, *flags: str) -> tuple[dict, list[dict]]:
    """`onnxcam explain` into ``out`` (exit 0 asserted): (summary, rows in image order)."""
    assert main(["explain", model, *images, "--save-npy", "--quiet", "--out", str(out),
                 *flags]) == 0
    summary = json.loads((out / "summary.json").read_text())
    return summary, summary["images"]


def _api(bundle: str, image: str, **options):
    """The same image explained through the Python API."""
    from explainer import Explainer

    with Explainer(bundle) as explainer:
        return explainer.explain(explainer.preprocess([image]), **options)


@pytest.mark.parametrize("flags, options, recorded", [
    (["--contrast", "least"], {"contrast": "least"}, {"contrast": "least"}),
    (["--contrast", "3"], {"contrast": 3}, {"contrast": "3"}),
    (["--score", "probability"], {"score": "probability"}, {"score": "probability"}),
    (["--contrast", "least", "--score", "probability"],
     {"contrast": "least", "score": "probability"}, {"contrast": "least", "score": "probability"}),
])
def test_contrast_and_score_change_the_maps_as_the_api_does(flags, options, recorded, tmp_path,
                                                            images, guided_bundle):
    plain, plain_rows = _run(guided_bundle, images, tmp_path / "plain", "--top-k", "2")
    summary, rows = _run(guided_bundle, images, tmp_path / "out", "--top-k", "2", *flags)
    assert {key: summary[key] for key in recorded} == recorded
    assert (plain["contrast"], plain["score"], plain["fuse"]) == (None, "logit", "mean")
    for image, row, before in zip(images, rows, plain_rows):
        assert row["status"] == "ok" and row["class_ids"] == before["class_ids"]
        heatmaps = np.load(tmp_path / "out" / row["heatmaps"])
        unchanged = np.load(tmp_path / "plain" / before["heatmaps"])
        assert np.abs(heatmaps - unchanged).max() > 1e-2  # the flag changed the maps
        api = _api(guided_bundle, image, top_k=2, **options)
        assert api.class_ids[0].tolist() == row["class_ids"]
        np.testing.assert_allclose(heatmaps, api.heatmaps[0], atol=1e-5)


def test_export_layer_sweep_prints_every_layer(tmp_path, cnn, capsys):
    bundle = tmp_path / "sweep"
    assert main(["export", cnn, "--layer", "features", "--layer", "relu_8",
                 "-o", str(bundle)]) == 0
    printed = capsys.readouterr().out
    assert "layer sweep of 2" in printed and "'relu_8'" in printed and "'features'" in printed
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert [layer["tensor"] for layer in manifest["layers"]] == SWEEP  # in graph order
    assert "input gradient" not in printed and "input_gradient" not in manifest


def test_layer_sweep_from_an_onnx_file_writes_each_layers_overlay(tmp_path, images, cnn,
                                                                    sweep_bundle, capsys):
    out = tmp_path / "out"
    assert main(["explain", cnn, *images, "--layer", SWEEP[0], "--layer", SWEEP[1],
                 "--top-k", "2", "--save-npy", "--out", str(out)]) == 0
    assert "layer sweep of 2" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    layers = [layer["layer"] for layer in
              json.loads((Path(sweep_bundle) / "manifest.json").read_text())["layers"]]
    assert summary["layers"] == layers == ["relu_8_node", "features_node"]
    for image, row in zip(images, summary["images"]):
        name = Path(image).stem
        assert row["layers"] == {layer: f"{name}_cam_{layer}.png" for layer in layers}
        with Image.open(out / row["overlay"]) as fused:
            size = fused.size
        for file in row["layers"].values():
            with Image.open(out / file) as overlay:
                assert overlay.size == size
        api = _api(sweep_bundle, image, top_k=2)  # fuse="mean" by default
        np.testing.assert_allclose(np.load(out / row["heatmaps"]), api.heatmaps[0], atol=1e-5)


def test_fuse_max_and_none_match_the_api(tmp_path, images, sweep_bundle):
    maps = {}
    for fuse in ("mean", "max", "none"):
        summary, rows = _run(sweep_bundle, images[:1], tmp_path / fuse, "--fuse", fuse)
        assert summary["fuse"] == (None if fuse == "none" else fuse)
        maps[fuse] = np.load(tmp_path / fuse / rows[0]["heatmaps"])
        api = _api(sweep_bundle, images[0], fuse=None if fuse == "none" else fuse)
        np.testing.assert_allclose(maps[fuse], api.heatmaps[0], atol=1e-5)
        if fuse == "none":  # the first layer's maps
            np.testing.assert_allclose(maps[fuse], api.layers["relu_8_node"].heatmaps[0],
                                       atol=1e-6)
    assert np.abs(maps["max"] - maps["mean"]).max() > 1e-2
    assert np.abs(maps["none"] - maps["mean"]).max() > 1e-2


@pytest.mark.parametrize("method", ["guided-backprop", "guided-gradcam"])
@pytest.mark.parametrize("k", [1, 2])
def test_pixel_methods_write_pixel_maps(method, k, tmp_path, images, guided_bundle):
    from explainer.visualize import pixel_image

    out = tmp_path / "out"
    summary, rows = _run(guided_bundle, images, out, "--method", method, "--top-k", str(k))
    assert summary["method"] == method
    for image, row in zip(images, rows):
        name = Path(image).stem
        expected = [f"{name}_pixels.png"] if k == 1 else [f"{name}_pixels_{j}.png"
                                                         for j in range(k)]
        assert row["pixels"] == expected and row["pixels_npy"] == f"{name}_pixels.npy"
        api = _api(guided_bundle, image, top_k=k, method=method)
        pixels = np.load(out / row["pixels_npy"])
        assert pixels.shape == (k, 3, SIZE, SIZE) == api.pixels[0].shape
        assert pixels.dtype == np.float32
        np.testing.assert_allclose(pixels, api.pixels[0], rtol=1e-4,
                                   atol=1e-5 * float(np.abs(api.pixels).max()))
        for j, file in enumerate(row["pixels"]):
            with Image.open(out / file) as png:
                assert png.size == (SIZE, SIZE) and png.mode == "RGB"
                drawn = np.asarray(png, dtype=np.int16)
            reference = np.asarray(pixel_image(api.pixels[0, j]), dtype=np.int16)
            assert np.abs(drawn - reference).max() <= 1
        np.testing.assert_allclose(np.load(out / row["heatmaps"]), api.heatmaps[0], atol=1e-5)


def test_pixel_method_on_an_onnx_file_builds_the_input_gradient(tmp_path, images, cnn):
    out = tmp_path / "out"
    summary, rows = _run(cnn, images[:1], out, "--method", "guided-backprop",
                         "--layer", SWEEP[0], "--layer", SWEEP[1])
    assert rows[0]["pixels"] == ["image0_pixels.png"] and (out / "image0_pixels.npy").is_file()
    assert set(rows[0]["layers"]) == {"relu_8_node", "features_node"}


def test_pixel_method_without_the_graph_fails_before_any_image(tmp_path, images, cnn, capsys):
    bundle = tmp_path / "plain"
    assert main(["export", cnn, "-o", str(bundle)]) == 0
    capsys.readouterr()
    out = tmp_path / "out"
    assert main(["explain", str(bundle), *images, "--method", "guided-gradcam",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'guided-gradcam'" in err and "input-gradient graph" in err
    assert "--input-gradient" in err and not out.exists()


def test_new_explain_flags_run_with_torch_unimportable(tmp_path, images, cnn):
    """A sweep, a pixel method, contrast and score, built from the .onnx file: no torch."""
    out = tmp_path / "out"
    args = ["explain", cnn, images[0], "--method", "guided-gradcam", "--layer", SWEEP[0],
            "--layer", SWEEP[1], "--contrast", "least", "--score", "probability", "--fuse",
            "max", "--out", str(out)]
    result = subprocess.run([sys.executable, "-c", NO_TORCH, *args], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    row = json.loads((out / "summary.json").read_text())["images"][0]
    assert row["pixels"] and len(row["layers"]) == 2
    assert all((out / f).is_file() for f in [*row["pixels"], *row["layers"].values()])


@pytest.mark.parametrize("flags, words", [
    (["--score", "prob"], ["'prob'", "'logit'", "'probability'"]),
    (["--fuse", "median"], ["'median'", "'mean'", "'max'", "--fuse none"]),
    (["--contrast", "top99"], ["'top99'", "between 1 and 10"]),
    (["--contrast", "top3", "--top-k", "2"], ["'top3'", "3 classes", "2 targets"]),
    (["--layer", "auto", "--layer", "features"], ["auto", "layer sweep"]),
])
def test_bad_contrast_score_fuse_and_sweep_exit_2(flags, words, tmp_path, images, cnn, capsys):
    out = tmp_path / "out"
    assert main(["explain", cnn, images[0], "--out", str(out), *flags]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines()
              if not line.startswith("note: ")]
    assert len(errors) == 1 and errors[0].startswith("error: "), errors
    assert all(word in errors[0] for word in words), errors[0]
    assert not out.exists()
