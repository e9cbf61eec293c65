import os
import pickle
import zipfile

import pytest
import torch

from napari_divnoising.errors import DivNoisingError
from napari_divnoising.model import DivNoisingModel
from napari_divnoising.model_io import FORMAT_NAME, last_checkpoint_path, load_model, model_to_dict, save_model
from napari_divnoising.network import DivNoisingVAE
from napari_divnoising.noise_models import GaussianNoiseModel, GMMNoiseModel


def _model(noise="gmm", depth=2):
    torch.manual_seed(0)
    net = DivNoisingVAE(depth=depth, start_filters=8, z_dim=4)
    if noise == "gmm":
        nm = GMMNoiseModel.initial(0.0, 255.0, generator=torch.Generator().manual_seed(1))
    elif noise == "gaussian":
        nm = GaussianNoiseModel(a=1.5, b=4.0, sigma_min=0.5, offset=30.0, scale=20.0)
    else:  # a co-learned model of whole numbers clipped at an offset
        nm = GaussianNoiseModel(a=1.5, b=4.0, sigma_min=0.5, offset=30.0, scale=20.0, quantum=1.0, floor=3.0)
    return DivNoisingModel(net, nm, 31.5, 12.25, config={"patch_size": 32, "beta": 1.0},
                           history={"steps": 7, "val_loss": [1.0, float("inf")]}, name="test")


@pytest.mark.parametrize("noise", ["gmm", "gaussian", "clipped"])
def test_round_trip_keeps_everything(tmp_path, noise):
    model = _model(noise)
    opt = torch.optim.Adam(model.network.parameters())
    model.network(torch.zeros(1, 1, 8, 8))[0].sum().backward()
    opt.step()
    path = save_model(model, tmp_path / "m.pt", training_state={"optimizer": opt.state_dict()})
    loaded = load_model(path)
    assert (loaded.data_mean, loaded.data_std, loaded.name) == (31.5, 12.25, "test")
    assert loaded.config == model.config and loaded.history["steps"] == 7
    assert loaded.history["val_loss"][1] == float("inf")
    for (k, v), (k2, v2) in zip(model.network.state_dict().items(), loaded.network.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    x = torch.linspace(0, 200, 11)
    torch.testing.assert_close(loaded.noise_model.log_likelihood(x + 3, x), model.noise_model.log_likelihood(x + 3, x))
    torch.testing.assert_close(loaded.image_from_decoded(x), model.image_from_decoded(x))
    assert loaded.noise_model.to_config() == model.noise_model.to_config()
    opt2 = torch.optim.Adam(loaded.network.parameters())
    opt2.load_state_dict(loaded.training_state["optimizer"])
    assert opt2.state_dict()["state"][0]["step"] == 1


def test_depth3_and_no_leftover_temp_files(tmp_path):
    save_model(_model(depth=3), tmp_path / "deep.pt")
    assert load_model(tmp_path / "deep.pt").network.depth == 3
    assert sorted(os.listdir(tmp_path)) == ["deep.pt"]


def test_last_checkpoint_path():
    assert last_checkpoint_path("/a/model.pt").name == "model.last.pt"
    assert last_checkpoint_path("/a/model").name == "model.last.pt"


def test_missing_file(tmp_path):
    with pytest.raises(DivNoisingError, match="not found"):
        load_model(tmp_path / "nope.pt")


def test_truncated_and_corrupt_files(tmp_path):
    path = save_model(_model(), tmp_path / "m.pt")
    blob = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(blob[: len(blob) // 2])
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage" * 100)
    for name in ("trunc.pt", "junk.pt"):
        with pytest.raises(DivNoisingError, match="not a readable"):
            load_model(tmp_path / name)


def test_plain_state_dict_is_foreign(tmp_path):
    torch.save(DivNoisingVAE().state_dict(), tmp_path / "sd.pt")
    with pytest.raises(DivNoisingError, match="not a napari-divnoising model"):
        load_model(tmp_path / "sd.pt")


def test_zip_of_something_else(tmp_path):
    with zipfile.ZipFile(tmp_path / "other.pt", "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(DivNoisingError):
        load_model(tmp_path / "other.pt")


def test_damaged_content_is_reported(tmp_path):
    payload = model_to_dict(_model())
    payload["network"] = {"encoder.0.weight": torch.zeros(3)}
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(DivNoisingError, match="damaged"):
        load_model(tmp_path / "bad.pt")
    payload = model_to_dict(_model())
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "new.pt")
    with pytest.raises(DivNoisingError, match="version"):
        load_model(tmp_path / "new.pt")


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = ""


def test_pickle_with_code_does_not_run(tmp_path):
    global MARKER
    MARKER = str(tmp_path / "pwned")
    payload = {"format": FORMAT_NAME, "format_version": 1, "evil": _Payload()}
    torch.save(payload, tmp_path / "evil.pt")
    (tmp_path / "raw.pkl").write_bytes(pickle.dumps(_Payload()))
    for name in ("evil.pt", "raw.pkl"):
        with pytest.raises(DivNoisingError):
            load_model(tmp_path / name)
    assert not os.path.exists(MARKER)
    # the payload does work when unpickled unsafely, so the test can fail
    pickle.loads((tmp_path / "raw.pkl").read_bytes())
    assert os.path.exists(MARKER)


@pytest.mark.parametrize("version, words", [("1", "damaged"), (0, "damaged"), (True, "damaged"), (None, "damaged"),
                                            (2, "Update napari-divnoising")])
def test_format_version_must_be_a_known_whole_number(tmp_path, version, words):
    payload = model_to_dict(_model())
    payload["format_version"] = version
    torch.save(payload, tmp_path / "v.pt")
    with pytest.raises(DivNoisingError, match=words):
        load_model(tmp_path / "v.pt")


def test_wrong_argument_types_are_refused_clearly(tmp_path):
    with pytest.raises(DivNoisingError, match="needs a DivNoisingModel"):
        save_model(None, tmp_path / "m.pt")
    with pytest.raises(DivNoisingError, match="file path"):
        save_model(_model(), None)
    with pytest.raises(DivNoisingError, match="file path"):
        load_model(None)
    assert sorted(os.listdir(tmp_path)) == []
