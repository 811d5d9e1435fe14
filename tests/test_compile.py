"""Compile: housing MLP data/training, tracing on the CPU path, manifest, upload to moto S3."""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import boto3
import pytest
import torch

from trn_workloads import artifacts
from trn_workloads.compile import cli, housing_mlp, manifest as manifest_mod, models

HEADER = "longitude,latitude,housing_median_age,total_rooms,total_bedrooms,population,households,median_income,median_house_value,ocean_proximity"  # noqa: E501 (expected message)


def _csv(tmp_path, *rows, header=HEADER):
    path = tmp_path / "housing.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- data encoding ---------------------------------------------------------------------

def test_load_csv_encodes_eleven_features_and_imputes_bedrooms(tmp_path):
    path = _csv(
        tmp_path,
        "-122.2,37.9,41,880,129,322,126,8.3252,452600,NEAR BAY",
        "-118.3,34.1,21,7099,,2401,1138,8.3014,358500,INLAND",
        "-117.0,33.0,52,1467,190,496,177,7.2574,352100,<1H OCEAN",
        "-121.0,36.0,10,1000,250,500,200,3.0,100000,ISLAND",
    )
    features, targets = housing_mlp.load_csv(path)
    assert features.shape == (4, housing_mlp.INPUT_FEATURES) == (4, 11)
    assert features[0].tolist()[:6] == pytest.approx([41, 880, 129, 322, 126, 8.3252])
    assert features[0, 6:].tolist() == [0, 0, 0, 1, 0]  # NEAR BAY
    assert features[1, 6:].tolist() == [0, 1, 0, 0, 0]  # INLAND
    assert features[1, 2].item() == 190  # blank total_bedrooms -> median of 129, 190, 250
    assert targets.tolist() == pytest.approx([4.526, 3.585, 3.521, 1.0])


@pytest.mark.parametrize(
    "rows, header, message",
    [
        (["1,2,3,4,5,6,7,8,9,NEAR BAY"], "longitude,latitude,total_rooms", r"missing columns housing_median_age, total_bedrooms"),
        (["1,2,41,880,129,322,126,8.3,452600,NEAR BAY", "1,2,41,many,129,322,126,8.3,1,INLAND"], HEADER, r"housing.csv:3: column total_rooms is 'many'"),  # noqa: E501 (expected message)
        (["1,2,41,880,129,322,126,,452600,NEAR BAY"], HEADER, r":2: column median_income is ''"),
        (["1,2,41,880,129,322,126,8.3,nan,NEAR BAY"], HEADER, r":2: column median_house_value is 'nan'"),
        (["1,2,41,880,129,322,126,8.3,1,MOON"], HEADER, r":2: column ocean_proximity is 'MOON', expected one of <1H OCEAN, INLAND"),
        ([], HEADER, r"no data rows"),
    ],
)
def test_bad_csv_is_rejected_before_anything_is_written(tmp_path, rows, header, message):
    path = _csv(tmp_path, *rows, header=header)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        housing_mlp.train(housing_mlp.TrainConfig(csv=str(path), output_dir=str(out), epochs=1))
    assert not out.exists()


def test_train_config_validation():
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        housing_mlp.TrainConfig(csv="x", output_dir="y", epochs=0)
    with pytest.raises(ValueError, match="learning_rate"):
        housing_mlp.TrainConfig(csv="x", output_dir="y", learning_rate=-1.0)


def test_train_cli_exit_code_on_bad_input(tmp_path, capsys):
    path = _csv(tmp_path, "1,2,41,880,129,322,126,8.3,1,MOON")
    assert housing_mlp.main(["train", "--csv", str(path), "--output-dir", str(tmp_path / "o")]) == 2
    assert "ocean_proximity is 'MOON'" in capsys.readouterr().err


# --- the MLP end to end ----------------------------------------------------------------

def test_housing_mlp_train_compile_upload_download_predict(aws_env, tmp_path, monkeypatch):
    monkeypatch.setenv(cli.NEURON_SDK_VERSION_ENV, "2.28.0")
    boto3.client("s3").create_bucket(Bucket="models", CreateBucketConfiguration={"LocationConstraint": "us-west-2"})

    # Data lives in S3 like in the cluster; train downloads it.
    csv_path = housing_mlp.write_synthetic_csv(tmp_path / "synthetic.csv", rows=600, seed=1)
    artifacts.upload_file(csv_path, "s3://models/data/housing.csv")
    train_dir = tmp_path / "train"
    assert housing_mlp.main(["train", "--csv", "s3://models/data/housing.csv", "--output-dir", str(train_dir),
                             "--epochs", "8", "--example-rows", "16"]) == 0
    checkpoint = train_dir / housing_mlp.CHECKPOINT_FILE
    example_file = train_dir / housing_mlp.EXAMPLE_INPUT_FILE
    saved = torch.load(checkpoint, weights_only=True)
    _, targets = housing_mlp.load_csv(csv_path)
    # Training learned something: better than always predicting the mean.
    assert saved["metrics"]["train_mse"] < 0.5 * targets.var(unbiased=False).item()
    assert torch.load(example_file, weights_only=True).shape == (16, 11)

    out = tmp_path / "compiled"
    assert cli.main(["--model", "housing-mlp", "--checkpoint", str(checkpoint), "--example-input", str(example_file),
                     "--batch-size", "8", "--output-dir", str(out), "--s3-uri", "s3://models/compiled/housing"]) == 0
    keys = sorted(o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="models", Prefix="compiled/")["Contents"])
    assert keys == ["compiled/housing/manifest.json", "compiled/housing/model.pt"]

    fetched = artifacts.download("s3://models/compiled/housing/", tmp_path / "fetched")
    manifest = json.loads((fetched / "manifest.json").read_text())
    created = datetime.datetime.fromisoformat(manifest.pop("created_at"))
    assert abs(datetime.datetime.now(datetime.timezone.utc) - created) < datetime.timedelta(minutes=5)
    assert manifest == {
        "format_version": 1,
        "model_name": "housing-mlp",
        "model_file": "model.pt",
        "batch_size": 8,
        "inputs": [{"name": "features", "shape": [8, 11], "dtype": "float32"}],
        "outputs": [{"name": "output0", "shape": [8, 1], "dtype": "float32"}],
        "backend": "cpu",
        "tracer": "torch.jit.trace",
        "neuron_sdk_version": "2.28.0",
        "compiler_version": None,
        "compiler_args": [],
        "torch_version": torch.__version__,
        "source": str(checkpoint),
        "source_sha256": _sha256(checkpoint),
        "model_sha256": _sha256(fetched / "model.pt"),
    }
    assert manifest_mod.read_manifest(fetched).batch_size == 8

    eager = housing_mlp.load_checkpoint(checkpoint)
    traced = torch.jit.load(str(fetched / "model.pt"))
    rows, _ = housing_mlp.load_csv(csv_path)
    with torch.no_grad():
        for batch in (rows[:8], rows[100:108]):
            assert torch.equal(traced(batch), eager(batch))


# --- other models, errors --------------------------------------------------------------

@pytest.fixture
def tiny_models_module(tmp_path, monkeypatch):
    (tmp_path / "tiny_models.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        class TwoInputNet(nn.Module):
            '''Token ids (int64) and dense features (float32) -> scores.'''
            def __init__(self):
                super().__init__()
                torch.manual_seed(3)
                self.embed = nn.Embedding(10, 4)
                self.head = nn.Linear(4 + 5, 2)
            def forward(self, ids, dense):
                return self.head(torch.cat([self.embed(ids).mean(dim=1), dense], dim=-1))

        instance = nn.Linear(3, 1)
        not_a_model = 42
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "tiny_models"
    sys.modules.pop("tiny_models", None)


def test_module_attr_model_with_two_inputs(tiny_models_module, tmp_path):
    out = tmp_path / "out"
    assert cli.main(["--model", "tiny_models:TwoInputNet", "--input-shape", "6", "--input-dtype", "int64",
                     "--input-shape", "5", "--input-dtype", "float32", "--input-name", "ids", "--input-name", "dense",
                     "--batch-size", "4", "--output-dir", str(out)]) == 0
    manifest = manifest_mod.read_manifest(out)
    assert [(i.name, i.shape, i.dtype) for i in manifest.inputs] == [("ids", (4, 6), "int64"), ("dense", (4, 5), "float32")]
    assert manifest.outputs[0].shape == (4, 2)
    from tiny_models import TwoInputNet

    model = TwoInputNet().eval()
    assert manifest.source == "state_dict"
    assert manifest.source_sha256 == models.state_dict_sha256(model)
    ids, dense = torch.randint(0, 10, (4, 6)), torch.randn(4, 5)
    with torch.no_grad():
        assert torch.equal(torch.jit.load(str(out / "model.pt"))(ids, dense), model(ids, dense))


def test_module_attr_instance_with_checkpoint_from_s3(aws_env, tiny_models_module, tmp_path):
    boto3.client("s3").create_bucket(Bucket="weights", CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    weights = {"weight": torch.full((1, 3), 2.0), "bias": torch.tensor([1.0])}
    torch.save({"state_dict": weights}, tmp_path / "w.pt")
    artifacts.upload_file(tmp_path / "w.pt", "s3://weights/w.pt")
    out = tmp_path / "out"
    assert cli.main(["--model", "tiny_models:instance", "--weights", "s3://weights/w.pt", "--input-shape", "3",
                     "--output-dir", str(out)]) == 0
    manifest = manifest_mod.read_manifest(out)
    assert manifest.source == "s3://weights/w.pt" and manifest.source_sha256 == _sha256(tmp_path / "w.pt")
    assert torch.jit.load(str(out / "model.pt"))(torch.ones(1, 3)).item() == 7.0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "vgg"], r"'vgg' is not one of resnet50, housing-mlp or a 'module:attr'"),
        (["--model", "tiny_models:TwoInputNet"], r"has no default input shape: pass --input-shape"),
        (["--model", "tiny_models:missing", "--input-shape", "3"], r"cannot be imported"),
        (["--model", "tiny_models:not_a_model", "--input-shape", "3"], r"gave a int, expected a torch.nn.Module"),
        (["--model", "housing-mlp"], r"needs --checkpoint"),
        (["--model", "resnet50"], r"needs --weights PATH"),
        (["--model", "housing-mlp", "--batch-size", "0"], r"batch_size must be >= 1"),
        (["--model", "housing-mlp", "--s3-uri", "bucket/prefix"], r"not an S3 URI"),
        (["--model", "housing-mlp", "--checkpoint", "/nonexistent.pt"], r"checkpoint /nonexistent.pt is not a file"),
        (["--model", "tiny_models:instance", "--input-shape", "3", "--input-dtype", "int64", "--input-dtype", "float32"],
         r"2 input dtypes given for 1 inputs"),
    ],
)
def test_compile_errors_name_the_problem_and_write_nothing(tiny_models_module, tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.delenv(models.RESNET50_WEIGHTS_ENV, raising=False)
    out = tmp_path / "out"
    assert cli.main([*argv, "--output-dir", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    with pytest.raises(ValueError, match=message):
        cli.compile_model(cli.parse_args([*argv, "--output-dir", str(out)]))
    assert not out.exists()


def test_example_input_with_too_few_rows(tmp_path):
    torch.save(torch.zeros(2, 11), tmp_path / "ex.pt")
    with pytest.raises(ValueError, match=r"has 2 rows, fewer than --batch-size 4"):
        cli.load_example(str(tmp_path / "ex.pt"), 4)


def test_random_example_follows_layout():
    layout = cli.InputLayout(("a", "b"), ((3, 2), (5,)), ("bfloat16", "int32"))
    a, b = cli.random_example(layout, batch_size=2)
    assert (a.shape, a.dtype, b.shape, b.dtype) == ((2, 3, 2), torch.bfloat16, (2, 5), torch.int32)


# --- manifest --------------------------------------------------------------------------

def _manifest_json(**overrides):
    data = {
        "format_version": 1, "model_name": "m", "model_file": "model.pt", "batch_size": 2,
        "inputs": [{"name": "x", "shape": [2, 3], "dtype": "float32"}],
        "outputs": [{"name": "output0", "shape": [2, 1], "dtype": "float32"}],
        "backend": "cpu", "tracer": "torch.jit.trace", "neuron_sdk_version": None, "compiler_version": None,
        "compiler_args": [], "torch_version": "2", "source": "state_dict", "source_sha256": "a", "model_sha256": "b",
        "created_at": "2025-01-01T00:00:00+00:00",
    }
    data.update(overrides)
    return data


def test_manifest_roundtrip(tmp_path):
    manifest = manifest_mod.Manifest.from_json(_manifest_json())
    manifest_mod.write_manifest(manifest, tmp_path)
    assert manifest_mod.read_manifest(tmp_path) == manifest
    assert manifest.inputs[0].sample_shape == (3,)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"format_version": 9}, "format_version 9 is not supported"),
        ({"inputs": [{"name": "x", "shape": [2, 3], "dtype": "complex64"}]}, "dtype 'complex64' is not one of"),
        ({"inputs": [{"name": "x", "shape": [4, 3], "dtype": "float32"}]}, "batch dimension 4 != batch_size 2"),
        ({"inputs": [{"name": "x", "shape": [2, 0], "dtype": "float32"}]}, "must be positive integers"),
        ({"surprise": 1}, "unknown keys surprise"),
    ],
)
def test_manifest_rejects_bad_content(overrides, message):
    with pytest.raises(ValueError, match=message):
        manifest_mod.Manifest.from_json(_manifest_json(**overrides), where="m.json")


def test_manifest_missing_keys_and_bad_json(tmp_path):
    data = _manifest_json()
    del data["backend"], data["inputs"]
    with pytest.raises(ValueError, match="missing keys backend, inputs"):
        manifest_mod.Manifest.from_json(data)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"manifest.json: not valid JSON \(line 1"):
        manifest_mod.read_manifest(tmp_path)


def test_module_entry_points_run_as_scripts(tmp_path):
    """`python -m` wiring of both CLIs, as the compile Job runs them."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "images")}
    synth = subprocess.run([sys.executable, "-m", "trn_workloads.compile.housing_mlp", "synth",
                            "--output", str(tmp_path / "d.csv"), "--rows", "5"], env=env, capture_output=True, text=True)
    assert synth.returncode == 0, synth.stderr
    assert housing_mlp.load_csv(tmp_path / "d.csv")[0].shape == (5, 11)
    bad = subprocess.run([sys.executable, "-m", "trn_workloads.compile", "--model", "vgg", "--output-dir", str(tmp_path / "o")],
                         env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "error: --model 'vgg' is not one of" in bad.stderr
