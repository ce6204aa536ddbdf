import subprocess
import sys

import pytest
import torch

from orderopt import train
from orderopt.errors import UserError
from orderopt.model import read_checkpoint

from .conftest import DEVICES


def run(*args):
    return subprocess.run([sys.executable, "-m", "orderopt.train", *args], capture_output=True, text=True)


def base_args(image_dir, out, steps):
    return [
        "base",
        "--images",
        str(image_dir),
        "--val-images",
        str(image_dir),
        "--val-every",
        "2",
        "--ckpt-every",
        "1",
        "--steps",
        str(steps),
        "--N",
        "8",
        "--M",
        "8",
        "--batch",
        "2",
        "--crop",
        "64",
        "--out",
        str(out),
        "--seed",
        "3",
    ]


def test_resume_equals_uninterrupted(tmp_path, image_dir):
    straight = tmp_path / "straight.pt"
    assert train.main(base_args(image_dir, straight, 4)) == 0
    split = tmp_path / "split.pt"
    assert train.main(base_args(image_dir, split, 2)) == 0
    assert read_checkpoint(split)["train_state"]["step"] == 2
    assert train.main(base_args(image_dir, split, 4)) == 0  # resumes from step 2
    a, b = read_checkpoint(straight), read_checkpoint(split)
    assert b["training"]["steps"] == 4 and len(b["training"]["validation"]) == 2
    for k in a["state_dict"]:
        assert torch.allclose(a["state_dict"][k], b["state_dict"][k], atol=1e-6), k


def test_export_is_fp16_without_state(tmp_path, image_dir):
    ckpt = tmp_path / "c.pt"
    train.main(base_args(image_dir, ckpt, 1))
    out = tmp_path / "w.pt"
    assert train.main(["export", "--ckpt", str(ckpt), "--out", str(out)]) == 0
    w = read_checkpoint(out)
    assert "train_state" not in w and w["state_dict"]["g_a.0.weight"].dtype == torch.float16


def test_cli_errors_are_one_line(tmp_path, image_dir):
    r = run("base", "--images", str(tmp_path / "none"), "--out", str(tmp_path / "x.pt"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "does not exist" in r.stderr
    out = tmp_path / "c.pt"
    train.main(base_args(image_dir, out, 1))
    r = run(*base_args(image_dir, out, 2)[:-4], "--M", "16", "--out", str(out))
    assert r.returncode == 2 and "choose another --out" in r.stderr and "Traceback" not in r.stderr
    r = run(*base_args(image_dir, tmp_path / "y.pt", 1), "--crop", "100")  # the codec's stride is 64
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--crop: must be a multiple of 64" in r.stderr


def tiny_context_args(image_dir, ckpt, cache) -> list[str]:
    """`train context` on the tiny model and images for three steps of tiny crops."""
    return ["context", "--train-images", str(image_dir), "--eval-images", str(image_dir),
            "--model", str(ckpt), "--cache-dir", str(cache),
            "--steps", "3", "--batch", "2", "--crop", "4"]  # fmt: skip


def test_train_context_order_and_proxy(tmp_path, tiny_ckpt, image_dir, monkeypatch):
    import json

    common = tiny_context_args(image_dir, tiny_ckpt, tmp_path / "cache")
    out = tmp_path / "ms.pt"
    assert train.main([*common, "--order", "0,1;2,3", "--out", str(out)]) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    assert res["order"] == "0,1;2,3" and res["held_out"]["bits_per_latent"] > 0
    out = tmp_path / "proxy.pt"
    assert train.main([*common, "--proxy", "--patch", "2", "--out", str(out)]) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    assert set(res["held_out"]) == {"raster", "paper", "tinylic", "autoregressive"}  # on the same weights
    assert res["raster_fraction"] == 0.25 and res["config"]["raster_fraction"] == 0.25
    with pytest.raises(UserError, match="smaller than the 4×4 patch"):
        train.main([*common, "--crop", "2", "--proxy", "--patch", "4", "--out", str(tmp_path / "p4.pt")])
    r = run(*common, "--order", "0,1;2", "--out", str(tmp_path / "x.pt"))
    assert r.returncode == 2 and "lengths" in r.stderr and "Traceback" not in r.stderr
    r = run(*common, "--order", "0,1;2,3", "--kind", "autoregressive", "--out", str(tmp_path / "x.pt"))
    assert r.returncode == 2 and "exactly one" in r.stderr
    # held-out curve on request, and --init from another context model of the same kind
    tuned = tmp_path / "tuned.pt"
    args = [*common, "--proxy", "--patch", "2", "--init", str(out), "--eval-every", "1", "--out", str(tuned)]
    assert train.main(args) == 0
    res = json.loads(tuned.with_suffix(".json").read_text())
    assert [p["step"] for p in res["held_out_curve"]] == [1, 2, 3] and res["init"]["from"] == str(out)
    assert res["init"]["steps_done"] == 3  # a trained --init says how far its own run went
    monkeypatch.setattr(train, "WEIGHTS_DIR", tmp_path)  # shipped weights: just their path
    assert train.main([*args[:-1], str(tmp_path / "from-shipped.pt")]) == 0
    assert "steps_done" not in json.loads((tmp_path / "from-shipped.json").read_text())["init"]
    assert res["held_out_curve"][0]["autoregressive_bits_per_latent"] > 0
    with pytest.raises(UserError, match="another context model"):
        train.main([*common, "--proxy", "--patch", "3", "--init", str(out), "--out", str(tmp_path / "p3.pt")])


def test_train_context_until_converged(tmp_path, tiny_ckpt, image_dir):
    import json

    common = tiny_context_args(image_dir, tiny_ckpt, tmp_path / "cache")
    common[common.index("--steps") + 1] = "50"  # a cap the rule stops well before
    out = tmp_path / "p.pt"
    # random weights at step 0, then no improvement of 50% after step 2: two drops, then stop
    args = [*common, "--proxy", "--patch", "2", "--eval-every", "2", "--converge", "1", "--min-delta", "0.5"]
    assert train.main([*args, "--out", str(out)]) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    curve, conv = res["held_out_curve"], res["convergence"]
    assert [p["event"] for p in curve] == ["improved", "improved", "drop", "drop", "stop"]
    assert conv["converged"] and conv["steps_run"] == 8 and conv["patience"] == 1 and conv["every"] == 2
    assert conv["lowest"] == min(p["bits_per_latent"] for p in curve)
    assert len(curve[0]["orders"]) == 24  # every 2×2 order, to see the ranking settle
    r = run(*common, "--proxy", "--converge", "2", "--out", str(tmp_path / "x.pt"))
    assert r.returncode == 2 and "--eval-every" in r.stderr and "Traceback" not in r.stderr
    # a resumed run keeps its --init record; another rule on its checkpoint is refused
    tuned = tmp_path / "tuned.pt"
    more = [*args, "--init", str(out), "--out", str(tuned)]
    assert train.main([*more, "--time-limit", "1e-9"]) == 0  # stops at once, checkpointed
    assert train.main(more) == 0
    res = json.loads(tuned.with_suffix(".json").read_text())
    assert (
        res["init"]["from"] == str(out)
        and res["convergence"]["steps_run"] == res["held_out_curve"][-1]["step"]
    )
    with pytest.raises(UserError, match="other training settings"):
        train.main([*args, "--lr-drops", "1", "--init", str(out), "--out", str(tuned)])


def test_init_continues_from_exported_weights(tmp_path, image_dir):
    first = tmp_path / "a.pt"
    train.main(base_args(image_dir, first, 2))
    shipped = tmp_path / "w.pt"
    train.main(["export", "--ckpt", str(first), "--out", str(shipped)])
    cont = tmp_path / "b.pt"
    assert train.main([*base_args(image_dir, cont, 3), "--init", str(shipped)]) == 0
    assert read_checkpoint(cont)["train_state"]["step"] == 3  # continued at step 2, one more step


@pytest.mark.parametrize("device", DEVICES)
def test_training_runs_and_resumes_on_device(tmp_path, tiny_ckpt, image_dir, device):
    """--device moves training there; checkpoints hold CPU tensors and resume on the device."""
    out = tmp_path / "b.pt"
    assert train.main([*base_args(image_dir, out, 1), "--device", device]) == 0
    assert train.main([*base_args(image_dir, out, 2), "--device", device]) == 0  # resumes
    ckpt = read_checkpoint(out)
    assert ckpt["training"]["steps"] == 2
    assert all(v.device.type == "cpu" for v in ckpt["state_dict"].values())
    ctx = tmp_path / "ctx.pt"
    args = ["context", "--train-images", str(image_dir), "--eval-images", str(image_dir)]
    args += ["--model", str(tiny_ckpt), "--cache-dir", str(tmp_path / "cache"), "--steps", "2"]
    args += ["--batch", "2", "--crop", "4", "--proxy", "--out", str(ctx), "--device", device]
    assert train.main(args) == 0


def test_time_limit_stops_checkpointed_and_validated_then_resumes(tmp_path, image_dir, capsys):
    out = tmp_path / "t.pt"
    assert train.main([*base_args(image_dir, out, 100_000), "--time-limit", "1"]) == 0
    assert "after the --time-limit of 1 s" in capsys.readouterr().out
    ckpt = read_checkpoint(out)
    step = ckpt["train_state"]["step"]
    assert 1 <= step < 100_000 and ckpt["training"]["validation"][-1]["step"] == step  # validated at the stop
    assert train.main([*base_args(image_dir, out, step + 1)]) == 0  # the same command resumes
    assert read_checkpoint(out)["train_state"]["step"] == step + 1


def test_prefetched_crops_resume_exactly(tmp_path, image_dir):
    """Two steps at once or one, a stop and one more: the same weights (the prefetched batch
    is drawn again after the resume)."""
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    assert train.main(base_args(image_dir, a, 2)) == 0
    assert train.main(base_args(image_dir, b, 1)) == 0 and train.main(base_args(image_dir, b, 2)) == 0
    sa, sb = read_checkpoint(a)["state_dict"], read_checkpoint(b)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_mixture_proxy_trains_then_searches(tmp_path, tiny_ckpt, image_dir):
    """--mixture 3 end to end: a proxy of mixtures trains, records K, rates every schedule, and
    the search reads K from the checkpoint; K = 1 files (the shipped ones) load as Gaussians;
    a checkpoint or --init of another K is refused."""
    import json

    import numpy as np

    from orderopt import search
    from orderopt.fit import load_context, save_context
    from orderopt.model import shipped_weights

    cache = tmp_path / "cache"
    common = tiny_context_args(image_dir, tiny_ckpt, cache)
    out = tmp_path / "p3.pt"
    proxy = ["--proxy", "--patch", "2", "--raster-fraction", "0.25"]
    assert train.main([*common, *proxy, "--mixture", "3", "--out", str(out)]) == 0
    model, meta = load_context(out)
    assert model.mixture == 3 and meta["mixture"] == 3 and meta["kind"] == "anyorder"
    res = json.loads(out.with_suffix(".json").read_text())
    assert res["mixture"] == 3 and set(res["held_out"]) == {"raster", "paper", "tinylic", "autoregressive"}
    assert all(np.isfinite(v["bits_per_latent"]) for v in res["held_out"].values())
    run_dir = tmp_path / "run"
    args = ["--patch", "2", "--model", str(tiny_ckpt), "--images", str(image_dir), "--cache-dir", str(cache)]
    assert search.main([*args, "--proxy", str(out), "--out", str(run_dir)]) == 0
    assert (run_dir / "candidates.csv").is_file() and (run_dir / "frontier.csv").is_file()
    with pytest.raises(UserError, match="another context model \\(mixture 3, not mixture 1\\)"):
        train.main([*common, *proxy, "--out", str(out)])  # K = 1 onto the K = 3 checkpoint
    with pytest.raises(UserError, match="another context model \\(mixture differ"):
        train.main([*common, *proxy, "--init", str(out), "--out", str(tmp_path / "g.pt")])
    dedicated = tmp_path / "ms3.pt"
    assert train.main([*common, "--order", "0,1;2,3", "--mixture", "3", "--out", str(dedicated)]) == 0
    assert load_context(dedicated)[0].mixture == 3
    assert json.loads(dedicated.with_suffix(".json").read_text())["held_out"]["bits_per_latent"] > 0
    shipped, shipped_meta = load_context(shipped_weights("proxy_k2"))
    assert shipped.mixture == 1 and "mixture" not in shipped_meta
    damaged = tmp_path / "damaged.pt"
    save_context(shipped, damaged, {**shipped_meta, "mixture": 0})
    with pytest.raises(UserError, match="K must be an integer of at least 1, not 0"):
        load_context(damaged)
    r = run(*common, *proxy, "--mixture", "0", "--out", str(tmp_path / "x.pt"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--mixture: must be at least 1" in r.stderr


def base_model_of(path):
    from orderopt.model import HyperpriorCodec

    ckpt = read_checkpoint(path)
    model = HyperpriorCodec(**ckpt["arch"])
    model.load_state_dict({k: v.float() for k, v in ckpt["state_dict"].items()})
    return model, ckpt


def test_base_converge_stops_on_the_plateau_and_keeps_the_lowest_weights(tmp_path, image_dir):
    """patience 1, no drop, an improvement of 50% needed: the second validation stops training.
    At this learning rate two steps make the tiny model worse, so the checkpoint holds the
    starting weights, says so, and a run started from it continues from there."""
    from orderopt import data

    out = tmp_path / "c.pt"
    rule = ["--converge", "1", "--lr-drops", "0", "--min-delta", "0.5", "--lr", "0.05"]
    assert train.main([*base_args(image_dir, out, 50), *rule]) == 0
    model, ckpt = base_model_of(out)
    t = ckpt["training"]
    conv, points = t["convergence"], t["validation"]
    assert [p["step"] for p in points] == [0, 2] and [p["event"] for p in points] == ["improved", "stop"]
    assert points[1]["loss"] > points[0]["loss"]  # the last weights are the worse ones
    assert conv["converged"] and t["steps"] == 2 and t["weights_step"] == 0 == conv["lowest_step"]
    assert conv["lowest"] == points[0]["loss"] and conv["metric"] == "loss"
    images = [data.load_image(p) for p in data.find_images(image_dir)][:24]
    assert train.validate(model, images, 0.0067)["loss"] == pytest.approx(points[0]["loss"], rel=1e-6)
    for p in points:  # the loss is λ·255²·MSE + bpp per image, averaged (PSNR is averaged in dB)
        assert p["loss"] == pytest.approx(p["bpp"] + 0.0067 * 255**2 * 10 ** (-p["psnr"] / 10), rel=0.2)
    # a converged run resumed does nothing more
    assert train.main([*base_args(image_dir, out, 50), *rule]) == 0
    assert read_checkpoint(out)["training"]["validation"] == points
    # --init from it: from the kept weights' step, with the earlier curve kept apart
    again = tmp_path / "again.pt"
    assert train.main([*base_args(image_dir, again, 50), "--converge", "5", "--init", str(out)]) == 0
    t2 = read_checkpoint(again)["training"]
    assert t2["init_validation"] == [points[0]] and t2["validation"][0]["step"] == 0
    assert t2["validation"][0]["loss"] == pytest.approx(points[0]["loss"], rel=1e-6)


def test_base_converge_resumes_as_uninterrupted_and_refuses_another_rule(tmp_path, image_dir):
    """A run through both drops to the stop (points at 0, 2, 4, 6), interrupted between
    validations, after each drop and after stopping, ends as the uninterrupted one."""
    rule = ["--converge", "1", "--min-delta", "0.9"]
    straight, split = tmp_path / "straight.pt", tmp_path / "split.pt"
    assert train.main([*base_args(image_dir, straight, 11), *rule]) == 0
    for cap in (3, 5, 7, 11):
        assert train.main([*base_args(image_dir, split, cap), *rule]) == 0
    a, b = read_checkpoint(straight), read_checkpoint(split)

    def curve(ckpt):
        return [{k: v for k, v in p.items() if k != "elapsed_s"} for p in ckpt["training"]["validation"]]

    assert curve(a) == curve(b)
    assert [(p["step"], p["event"]) for p in curve(a)] == [
        (0, "improved"),
        (2, "drop"),
        (4, "drop"),
        (6, "stop"),
    ]
    assert [p["lr"] for p in curve(a)] == pytest.approx([1e-4, 1e-5, 1e-6, 1e-6])
    assert a["training"]["convergence"] == b["training"]["convergence"]
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for other in (["--converge", "2", "--min-delta", "0.9"], [], [*rule, "--lr", "1e-3"]):
        with pytest.raises(UserError, match="another --converge rule"):
            train.main([*base_args(image_dir, split, 20), *other])
    args = base_args(image_dir, tmp_path / "n.pt", 2)
    del args[args.index("--val-images") : args.index("--val-images") + 2]
    r = run(*args, "--converge", "2")
    assert r.returncode == 2 and "--converge needs --val-images" in r.stderr
    assert r.stderr.strip().count("\n") == 0
