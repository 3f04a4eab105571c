"""SAE checkpoints: safetensors + JSON round-trip, and every mismatch refused."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from bioviz.sae import ARCHITECTURES, SAEConfig, build_sae, load_sae

pytestmark = pytest.mark.usefixtures("one_thread")


def trained(arch, **kw):
    sae = build_sae(SAEConfig(architecture=arch, d_in=8, d_sae=32, k=3, seed=1, **kw))
    x = torch.randn(64, 8) * 4 + 1
    sae.fit_normalisation(x)
    sae.init_from_data(x)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for _ in range(3):
        losses = sae.loss(x, sae(x))
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    return sae.eval(), x


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_round_trip_gives_identical_outputs(arch, tmp_path):
    sae, x = trained(arch, provenance={"layer": "blocks.2"})
    sae.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"sae.safetensors", "sae.json"}
    doc = json.loads((tmp_path / "sae.json").read_text())
    assert doc["architecture"] == arch and doc["d_in"] == 8 and doc["d_sae"] == 32
    assert doc["format_version"] == 1 and doc["provenance"] == {"layer": "blocks.2"}
    assert doc["normalisation_scale"] == pytest.approx(float(sae.norm_scale))
    assert doc["tensors"]["W_enc"]["shape"] == [8, 32]
    loaded = load_sae(tmp_path, expect_architecture=arch, expect_d_in=8)
    assert type(loaded) is type(sae) and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), sae.encode(x))
        assert torch.equal(loaded(x).x_hat, sae(x).x_hat)
    for name, tensor in sae.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_batchtopk_threshold_is_saved_in_json(tmp_path):
    sae, _ = trained("batchtopk")
    assert sae.threshold > 0
    sae.save(tmp_path)
    doc = json.loads((tmp_path / "sae.json").read_text())
    assert doc["inference_threshold"] == pytest.approx(float(sae.threshold))


def edit_json(path, **changes):
    doc = json.loads((path / "sae.json").read_text())
    doc.update(changes)
    (path / "sae.json").write_text(json.dumps(doc))


def test_topk_weights_with_json_saying_relu_are_refused(tmp_path):
    trained("topk")[0].save(tmp_path)
    edit_json(tmp_path, architecture="relu")
    with pytest.raises(ValueError, match=r"sae\.safetensors holds a 'topk' SAE.*architecture='relu'"):
        load_sae(tmp_path)


def test_json_dims_disagreeing_with_weights_are_refused(tmp_path):
    trained("topk")[0].save(tmp_path)
    edit_json(tmp_path, d_sae=64)
    with pytest.raises(ValueError, match=r"d_sae='32'.*sae\.json says d_sae='64'"):
        load_sae(tmp_path)


def test_tensor_shape_mismatch_is_refused(tmp_path):
    trained("relu")[0].save(tmp_path)
    weights = tmp_path / "sae.safetensors"
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        header = f.metadata()
    state = load_file(weights)
    state["b_enc"] = torch.zeros(31)
    save_file(state, weights, metadata=header)
    with pytest.raises(ValueError, match=r"'b_enc' has shape \(31,\).*implies \(32,\)"):
        load_sae(tmp_path)


def test_missing_or_extra_tensor_is_refused(tmp_path):
    trained("jumprelu")[0].save(tmp_path)
    edit_json(tmp_path, architecture="relu")
    weights = tmp_path / "sae.safetensors"
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        header = dict(f.metadata(), architecture="relu")
    save_file(load_file(weights), weights, metadata=header)
    with pytest.raises(ValueError, match=r"unexpected \['log_threshold'\]"):
        load_sae(tmp_path)


def test_expectations_are_checked(tmp_path):
    trained("topk")[0].save(tmp_path)
    with pytest.raises(ValueError, match=r"store has d=768 but the SAE was trained on d_in=8"):
        load_sae(tmp_path, expect_d_in=768)
    with pytest.raises(ValueError, match=r"expected a 'jumprelu' SAE.*'topk'"):
        load_sae(tmp_path, expect_architecture="jumprelu")


@pytest.mark.parametrize("name", ["sae.json", "sae.safetensors"])
def test_missing_file_error_names_the_file(tmp_path, name):
    trained("topk")[0].save(tmp_path)
    (tmp_path / name).unlink()
    with pytest.raises(FileNotFoundError, match=name.replace(".", r"\.")):
        load_sae(tmp_path)


def test_foreign_files_are_refused(tmp_path):
    trained("topk")[0].save(tmp_path)
    save_file(load_file(tmp_path / "sae.safetensors"), tmp_path / "sae.safetensors")
    with pytest.raises(ValueError, match="not written by bioviz"):
        load_sae(tmp_path)
    (tmp_path / "sae.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"sae\.json: not valid JSON"):
        load_sae(tmp_path)


def test_invalid_config_in_json_names_the_file(tmp_path):
    trained("topk")[0].save(tmp_path)
    edit_json(tmp_path, k=99)
    with pytest.raises(ValueError, match=r"(?s)sae\.json.*k=99 is larger than d_sae=32"):
        load_sae(tmp_path)


def test_state_restored_from_a_training_checkpoint_saves_its_fitted_scalars(tmp_path):
    # a resumed run restores buffers through load_state_dict, never calling fit_normalisation
    sae, x = trained("batchtopk")
    fresh = build_sae(SAEConfig(architecture="batchtopk", d_in=8, d_sae=32, k=3))
    fresh.load_state_dict(sae.state_dict())
    fresh.eval().save(tmp_path)
    doc = json.loads((tmp_path / "sae.json").read_text())
    assert doc["normalisation_scale"] == pytest.approx(float(sae.norm_scale))
    assert doc["inference_threshold"] == pytest.approx(float(sae.threshold))
    with torch.no_grad():
        assert torch.equal(load_sae(tmp_path).encode(x), sae.encode(x))
