import pytest
import torch

from napari_divnoising.device import resolve_device
from napari_divnoising.errors import DivNoisingError


def test_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("name", ["tpu", "gpu0", "cuda:x"])
def test_unknown_or_unavailable_devices_raise(name):
    if name.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(DivNoisingError):
        resolve_device(name)
