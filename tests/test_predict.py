"""`fmnist predict`: the same classes as `evaluate` on image files, every input format, one
line per bad input, and the ONNX file on ONNX Runtime in a process without torch."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fmnist.files import load_torch
from fmnist.idx import write_idx
from fmnist.images import MAX_PIXELS, in_dataset_form, read_inputs, to_dataset_form
from tests.support import PY

N_IMAGES = 500  # the test split's first 500 (all of the synthetic split's 200)


def fmnist(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "fmnist.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=env)


def first_test_images(wd: Path) -> np.ndarray:
    return load_torch(wd / "data/prepared/test.pt")["images"][:N_IMAGES].numpy()


def evaluated_classes(wd: Path, name: str, n: int) -> list[str]:
    with open(wd / f"metrics/confusion/{name}.csv", newline="") as f:
        return [row["predicted"] for row in csv.DictReader(f)][:n]


@pytest.fixture(scope="module")
def pngs(packaged_template, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pngs")
    for i, image in enumerate(first_test_images(packaged_template)):
        Image.fromarray(image).save(out / f"{i:04d}.png")
    return out


def classes_of(proc: subprocess.CompletedProcess) -> list[str]:
    assert proc.returncode == 0, proc.stderr
    return [row["class"] for row in csv.DictReader(proc.stdout.splitlines())]


@pytest.mark.parametrize("name", ["lenet", "alexnet"])
def test_predict_on_png_files_gives_evaluates_classes(packaged_template, pngs, name):
    wd = packaged_template
    expected = evaluated_classes(wd, name, N_IMAGES)
    assert len(expected) == len(list(pngs.iterdir())) > 100
    # the model folder and the release folder, with the view params.yaml / meta.json name
    for model in (f"models/{name}", f"dist/{name}"):
        assert classes_of(fmnist("predict", model, str(pngs), "--csv", cwd=wd)) == expected
    # the ONNX export agrees too
    onnx = classes_of(fmnist("predict", f"dist/{name}/model.onnx", str(pngs), "--csv", cwd=wd))
    assert onnx == expected


def test_predict_reads_npy_idx_and_jpeg_alike(packaged_template, pngs, tmp_path):
    wd = packaged_template
    images = first_test_images(wd)[:50]
    np.save(tmp_path / "batch.npy", images)
    np.save(tmp_path / "one.npy", images[0])
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "plain.idx", images)
    Image.fromarray(images[0]).save(tmp_path / "one.jpg", quality=100)
    proc = fmnist("predict", "models/lenet", str(tmp_path / "batch.npy"),
                  str(tmp_path / "t10k-images-idx3-ubyte.gz"), str(tmp_path / "plain.idx"),
                  str(tmp_path / "one.npy"), str(tmp_path / "one.jpg"), "--json", "--top", "3",
                  cwd=wd)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    preds = out["predictions"]
    assert out["model"] == "lenet" and out["view"] in ("single", "hflip") and out["errors"] == []
    assert len(preds) == 50 * 3 + 2
    assert preds[0]["file"] == f"{tmp_path / 'batch.npy'}[0]"
    assert all(len(p["top"]) == 3 and p["top"][0]["class"] == p["class"] for p in preds)
    assert all(1 >= p["top"][0]["probability"] >= p["top"][1]["probability"] for p in preds)
    npy, idx_gz, idx = (([p["class"] for p in preds[i * 50:(i + 1) * 50]]) for i in range(3))
    pngs_classes = classes_of(fmnist("predict", "models/lenet", *sorted(
        str(p) for p in pngs.iterdir())[:50], "--csv", cwd=wd))
    assert npy == idx_gz == idx == pngs_classes
    assert preds[150]["class"] == npy[0]  # one.npy: a single (28, 28) image

    table = fmnist("predict", "models/lenet", str(tmp_path / "one.npy"), cwd=wd)
    head, row = table.stdout.splitlines()
    assert head.split() == ["file", "class", "probability", "runner-up", "probability"]
    assert row.startswith(str(tmp_path / "one.npy")) and npy[0] in row


def truncated_png(path: Path) -> None:
    buf = path.with_suffix(".tmp")
    Image.fromarray(np.full((64, 64), 200, np.uint8)).save(buf, format="PNG")
    data = buf.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    buf.unlink()


def bomb_png(path: Path, side: int) -> None:
    """A valid PNG of side x side black pixels, a few kB on disk (built by hand: no
    decoder runs)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    rows = zlib.compress(b"\x00" * (side + 1) * side, 9)
    ihdr = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])  # 8-bit grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows)
                     + chunk(b"IEND", b""))


def test_each_bad_input_is_one_line_and_the_rest_still_runs(packaged_template, pngs, tmp_path):
    wd = packaged_template
    (tmp_path / "notes.png").write_text("not an image at all\n")
    truncated_png(tmp_path / "cut.png")
    side = int(MAX_PIXELS ** 0.5) + 100
    bomb_png(tmp_path / "bomb.png", side)
    assert (tmp_path / "bomb.png").stat().st_size < 200_000
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    np.save(tmp_path / "words.npy", np.array(["a", "b"]))
    good = sorted(pngs.iterdir())[0]
    bad = ["notes.png", "cut.png", "bomb.png", "empty", "words.npy", "missing.png"]
    proc = fmnist("predict", "models/lenet", *(str(tmp_path / b) for b in bad[:3]),
                  str(good), *(str(tmp_path / b) for b in bad[3:]), "--csv", cwd=wd)
    assert proc.returncode == 1
    rows = list(csv.DictReader(proc.stdout.splitlines()))
    assert [r["file"] for r in rows] == [str(good)]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == len(bad), proc.stderr
    for name, line in zip(bad, lines, strict=True):
        assert line.startswith(f"fmnist predict: {tmp_path / name}: "), line
        assert "Traceback" not in line
    assert "not an image" in lines[0] and "truncated" in lines[1]
    assert f"{side}x{side} pixels, over the cap" in lines[2]
    assert "no images" in lines[3] and "pixels" in lines[4] and "no such file" in lines[5]


def test_a_model_that_cannot_be_used_is_one_line(packaged_template, pngs, tmp_path):
    wd = packaged_template
    import shutil
    good = str(sorted(pngs.iterdir())[0])
    no_weights = tmp_path / "no-weights"
    shutil.copytree(wd / "models/lenet", no_weights)
    (no_weights / "model.pt").unlink()
    other = tmp_path / "other-arch"  # the AlexNet's weights with LeNet's meta.json
    shutil.copytree(wd / "models/alexnet", other)
    shutil.copy(wd / "models/lenet/meta.json", other / "meta.json")
    garbage = tmp_path / "x.onnx"
    garbage.write_bytes(b"\x08\x01garbage")
    for model, needle in ((no_weights, "no model.pt"), (other, "does not fit model 'lenet'"),
                          (garbage, "not a loadable ONNX model"),
                          (tmp_path / "nowhere", "no such model")):
        proc = fmnist("predict", str(model), good, cwd=wd)
        assert proc.returncode == 2, (model, proc.stderr)
        assert proc.stderr.count("\n") == 1 and needle in proc.stderr, proc.stderr
        assert proc.stdout == ""


def test_onnx_predict_runs_where_torch_cannot_be_imported(packaged_template, pngs, tmp_path):
    wd = packaged_template
    blocker = tmp_path / "block"
    (blocker / "torch").mkdir(parents=True)
    (blocker / "torch" / "__init__.py").write_text(
        "raise ImportError('torch is blocked in this test')\n")
    env = {**os.environ, "PYTHONPATH": str(blocker)}
    probe = subprocess.run([PY, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "blocked" in probe.stderr
    proc = fmnist("predict", "dist/alexnet/model.onnx", str(pngs), "--csv", cwd=wd, env=env)
    assert classes_of(proc) == evaluated_classes(wd, "alexnet", N_IMAGES)
    # a model folder needs torch, and says so in one line
    proc = fmnist("predict", "dist/alexnet", str(pngs), cwd=wd, env=env)
    assert proc.returncode != 0 and "blocked" in proc.stderr


def test_the_onnx_side_imports_no_torch(tmp_path):
    """The torch-free corner: reading images, the ONNX contract and ONNX Runtime
    (fmnist.predict, fmnist.images, fmnist.views and what they import) load where torch
    cannot be imported, and import none of it."""
    blocker = tmp_path / "block"
    (blocker / "torch").mkdir(parents=True)
    (blocker / "torch" / "__init__.py").write_text("raise ImportError('torch is blocked')\n")
    code = ("import sys\nimport fmnist.predict, fmnist.images, fmnist.views\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    proc = subprocess.run([PY, "-c", code], env={**os.environ, "PYTHONPATH": str(blocker)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# ---------------------------------------------------------------- conversion (fast)


def garment_photo(h: int, w: int, dark_on_light: bool = True) -> np.ndarray:
    """A product photo: a dark rectangle 'garment' off-centre on a light background."""
    a = np.full((h, w), 240 if dark_on_light else 10, np.uint8)
    a[h // 5: h // 2, w // 3: w - w // 10] = 30 if dark_on_light else 220
    return a


def test_conversion_follows_the_data_sets_steps():
    a = to_dataset_form(garment_photo(300, 200))
    assert a.shape == (28, 28) and a.dtype == np.uint8
    # a light garment on black: the garment is wider than high, so it spans the width
    # and the rows above and below it are background
    assert in_dataset_form(a) and a[0].max() <= 30 and a[-1].max() <= 30
    rows, cols = np.flatnonzero(a.max(1) > 100), np.flatnonzero(a.max(0) > 100)
    # trimmed to the garment, its longer side (width 113 of 300x200) resized to 28, centred
    assert cols[0] <= 1 and cols[-1] >= 26
    assert abs((rows[0] + rows[-1]) / 2 - 13.5) <= 1.5
    assert a[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].mean() > 150
    # light on dark already: not inverted
    b = to_dataset_form(garment_photo(90, 90, dark_on_light=False))
    assert b.mean() > 100 and b[0].max() < 60 and b[-1].max() < 60
    # an image in the data set's form is used exactly as it is
    c = np.zeros((28, 28), np.uint8)
    c[3:20, 5:9] = 255
    assert to_dataset_form(c) is c


def test_colour_arrays_and_16_bit_images_read_like_8_bit_ones(tmp_path):
    gray = garment_photo(60, 40)
    np.save(tmp_path / "rgb.npy", np.stack([gray] * 3, axis=-1))
    Image.fromarray(gray).save(tmp_path / "8bit.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "16bit.png")
    items, errors = read_inputs([tmp_path / "rgb.npy", tmp_path / "8bit.png",
                                 tmp_path / "16bit.png"])
    assert errors == [] and len(items) == 3  # the (60, 40, 3) array is one image
    assert np.array_equal(items[0].image, items[1].image)
    assert np.array_equal(items[1].image, items[2].image)


def test_pictures_convert_unless_told_not_to(tmp_path):
    Image.fromarray(garment_photo(120, 80)).convert("RGB").save(tmp_path / "photo.jpg")
    rgba = np.zeros((50, 40, 4), np.uint8)
    rgba[10:40, 10:30] = (200, 30, 30, 255)  # a red garment cut out on transparency
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    items, errors = read_inputs([tmp_path / "photo.jpg", tmp_path / "cutout.png"])
    assert errors == [] and [i.image.shape for i in items] == [(28, 28)] * 2
    assert all(in_dataset_form(i.image) and i.image.max() > 100 for i in items)
    items, errors = read_inputs([tmp_path / "photo.jpg"], convert=False)
    assert items == [] and "--no-convert needs 28x28" in errors[0]


# ---------------------------------------------------------------- round four: one input, one fate


def tiny_onnx(path: Path, fill: float = 0.01, channels: int = 1, classes: int = 10,
              elem: int = 1, second_input: bool = False, batch: str | int = "N") -> Path:
    """A graph of this project's metadata: flatten, one dense layer of ``fill``; its
    shape, type and inputs as asked (elem 1: float32, 11: float64)."""
    import onnx
    from onnx import TensorProto, helper

    n_in = channels * 28 * 28
    weights = helper.make_tensor("w", elem, [n_in, classes], [fill] * (n_in * classes))
    shape = helper.make_tensor("s", TensorProto.INT64, [2], [-1, n_in])
    inputs = [helper.make_tensor_value_info("x", elem, [batch, channels, 28, 28])]
    if second_input:
        inputs.append(helper.make_tensor_value_info("y", elem, ["N", 1]))
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "s"], ["f"]),
         helper.make_node("MatMul", ["f", "w"], ["logits"])], "g", inputs,
        [helper.make_tensor_value_info("logits", elem, [batch, classes])], [weights, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    meta = model.metadata_props.add()
    meta.key, meta.value = "fmnist", json.dumps({"model": "lenet", "tta": "single"})
    onnx.save(model, path)
    return path


def a_png(path: Path) -> Path:
    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(path)
    return path


@pytest.mark.parametrize("kind", ["5 logits", "20 logits", "3 channels", "float64",
                                  "two inputs", "fixed batch 1"])
def test_an_onnx_graph_off_the_contract_is_one_line(tmp_path, kind):
    """Round five, case 7: a graph whose batch is fixed at 1 passed the check, then
    failed on any batch > 1; it is off the contract like the others."""
    args = {"5 logits": {"classes": 5}, "20 logits": {"classes": 20},
            "3 channels": {"channels": 3}, "float64": {"elem": 11},
            "two inputs": {"second_input": True}, "fixed batch 1": {"batch": 1}}[kind]
    model = tiny_onnx(tmp_path / "m.onnx", **args)
    proc = fmnist("predict", str(model), str(a_png(tmp_path / "a.png")), cwd=tmp_path)
    assert proc.returncode == 2 and "does not keep the contract" in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stdout == ""


def test_the_contract_checker_takes_a_graph_that_keeps_it(tmp_path):
    model = tiny_onnx(tmp_path / "m.onnx")
    proc = fmnist("predict", str(model), str(a_png(tmp_path / "a.png")), "--json",
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["predictions"][0]["class"] == "T-shirt/top"


def test_non_finite_outputs_are_that_inputs_error_and_json_stays_json(tmp_path):
    model = tiny_onnx(tmp_path / "m.onnx", fill=float("nan"))
    proc = fmnist("predict", str(model), str(a_png(tmp_path / "a.png")), "--json",
                  cwd=tmp_path)
    assert proc.returncode == 1
    out = json.loads(proc.stdout, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert out["predictions"] == [] and "not finite" in out["errors"][0]
    assert "nan" not in proc.stdout.lower().replace("not finite (nan", "")


def test_odd_inputs_are_each_their_own_line(tmp_path):
    """A FIFO (it would hang a reader), a gzip bomb, an empty float array, an ambiguous
    (28, 28, 1) array, a file Pillow takes for DDS and cannot decode, a name too long
    for the file system and a name that is not UTF-8: each is one line, the good
    image is still classified, exit code 1."""
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    bomb = tmp_path / "bomb-idx3-ubyte.gz"
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    header = bytes([0, 0, 8, 3]) + (10**6).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    bomb.write_bytes(z.compress(header) + z.compress(bytes(300 << 20)) + z.flush())
    np.save(tmp_path / "empty.npy", np.zeros((0,), np.float32))
    np.save(tmp_path / "strips.npy", np.zeros((28, 28, 1), np.uint8))
    np.save(tmp_path / "five.npy", np.zeros((28, 28, 5), np.uint8))  # not 28 images
    (tmp_path / "odd.dds").write_bytes(b"DDS " + bytes(124) + b"\x00" * 64)
    long_name = str(tmp_path / ("x" * 300 + ".png"))
    weird = os.fsencode(tmp_path) + b"/\xff\xfe.png"
    a_png(Path(os.fsdecode(weird)))
    good = a_png(tmp_path / "good.png")
    model = tiny_onnx(tmp_path / "m.onnx")
    args = [str(fifo), str(bomb), str(tmp_path / "empty.npy"), str(tmp_path / "strips.npy"),
            str(tmp_path / "five.npy"), str(tmp_path / "odd.dds"), long_name,
            os.fsdecode(weird), str(good)]
    proc = subprocess.run([PY, "-m", "fmnist.cli", "predict", str(model), *args],
                          cwd=tmp_path, capture_output=True, timeout=60)
    err = proc.stderr.decode("utf-8")
    assert proc.returncode == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 7, err  # all but the good image and the non-UTF-8 name
    for needle in ("pipe.png: not a regular file", "decompresses to over",
                   "empty.npy: array: empty", "strips.npy: array: shape (28, 28, 1) is "
                   "ambiguous", "five.npy: array: shape (28, 28, 5) is ambiguous",
                   "odd.dds: ", "File name too long"):
        assert any(needle in line for line in lines), (needle, err)
    assert all(len(line) < 300 for line in lines)
    out = proc.stdout.decode("utf-8")
    assert "good.png" in out and "\\xff\\xfe.png" in out


def test_a_params_file_that_does_not_parse_is_refused_not_ignored(tmp_path):
    """Round five, case 6: `--params FILE` that does not parse fell back to a single
    view; it is one line naming the file, whether or not the model records a view."""
    model = tiny_onnx(tmp_path / "m.onnx")  # records tta: single
    (tmp_path / "broken.yaml").write_text("evaluate: {tta: [\n")
    (tmp_path / "odd.yaml").write_text("evaluate: {tta: sideways}\n")
    png = str(a_png(tmp_path / "a.png"))
    for name, needle in (("broken.yaml", "not valid YAML"), ("odd.yaml", "sideways"),
                         ("missing.yaml", "not found")):
        proc = fmnist("predict", str(model), png, "--params", str(tmp_path / name),
                      cwd=tmp_path)
        assert proc.returncode == 2 and needle in proc.stderr and name in proc.stderr, \
            proc.stderr
        assert proc.stderr.count("\n") == 1 and proc.stdout == ""
    (tmp_path / "good.yaml").write_text("evaluate: {tta: hflip}\n")
    proc = fmnist("predict", str(model), png, "--params", str(tmp_path / "good.yaml"),
                  "--json", cwd=tmp_path)
    assert proc.returncode == 0 and json.loads(proc.stdout)["view"] == "single"


def test_a_closed_stdout_is_one_line(tmp_path):
    model = tiny_onnx(tmp_path / "m.onnx")
    proc = subprocess.run(f"{PY} -m fmnist.cli predict {model} {a_png(tmp_path / 'a.png')} >&-",
                          shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "error: stdout is closed: the predictions have nowhere to go")


def test_meta_json_normalize_of_the_wrong_type_is_one_line():
    from fmnist.common import UserError
    from fmnist.inference import input_stats
    for norm in ({"mean": "0.28", "std": 0.35}, {"mean": 0.28, "std": 0}, {"mean": 0.28}):
        with pytest.raises(UserError, match="normalize must hold"):
            input_stats({"model": "lenet", "normalize": norm})
    assert input_stats({"normalize": {"mean": 0, "std": 1}}).std == 1.0
