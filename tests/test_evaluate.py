import json
import subprocess
import sys

import numpy as np
from PIL import Image

from orderopt import evaluate


def test_evaluate_json_and_recon(tmp_path, tiny_ckpt, image_dir):
    out, recon = tmp_path / "r.json", tmp_path / "rec"
    assert (
        evaluate.main(
            ["--images", str(image_dir), "--model", str(tiny_ckpt), "--out", str(out), "--recon", str(recon)]
        )
        == 0
    )
    r = json.loads(out.read_text())
    assert r["name"] == "orderopt-hyperprior" and len(r["images"]) == 3
    row = r["images"][2]
    assert row["name"] == "sub/c.png" and row["width"] == 130 and row["height"] == 64
    assert np.isclose(row["bpp"], row["bpp_y"] + row["bpp_z"]) and row["bpp"] > 0
    assert np.isclose(r["results"]["bpp"][0], np.mean([i["bpp"] for i in r["images"]]))
    png = Image.open(recon / "sub_c.png")
    assert png.size == (130, 64)


def test_evaluate_errors(tmp_path, image_dir):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "orderopt.evaluate",
            "--images",
            str(image_dir),
            "--model",
            str(tmp_path / "none.pt"),
        ],
        capture_output=True,
        text=True,
    )
    assert (
        r.returncode == 2
        and r.stderr.startswith("error: base-model checkpoint")
        and r.stderr.count("\n") == 1
    )
