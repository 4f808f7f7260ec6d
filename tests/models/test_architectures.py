"""Every registered architecture: shapes, seeded construction, the Normalize front and sizes."""

from __future__ import annotations

import copy
import importlib

import pytest
import torch
from torch import nn

from misentry.models import ARCHITECTURES, InputSpec, Normalize, build_model, get_arch, last_linear

SPECS = {
    "1x28x28/10": InputSpec(1, 28, 28, 10, (0.1307,), (0.3081,)),
    "1x8x8/10": InputSpec(1, 8, 8, 10, (0.3053,), (0.3759,)),
    "3x32x32/43": InputSpec(3, 32, 32, 43, (0.3337, 0.3064, 0.3171), (0.2672, 0.2564, 0.2629)),
}
SMALL = SPECS["1x8x8/10"]
CIFAR = InputSpec(3, 32, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))

# The module each optional extra provides; an architecture whose extra is missing is skipped
# (and test_missing_extra_raises_import_error checks the error it gives instead).
EXTRA_MODULES = {"vision": "torchvision"}

# torchvision's DenseNet-121 downsamples by 32: its transition pooling fails on smaller inputs.
MIN_SIDE = {"densenet121": 32}

ARCHS = sorted(ARCHITECTURES)


def extra_available(arch: str) -> bool:
    extra = ARCHITECTURES[arch].extra
    if extra is None:
        return True
    assert extra in EXTRA_MODULES, f"add the module of extra {extra!r} to EXTRA_MODULES"
    try:
        importlib.import_module(EXTRA_MODULES[extra])
    except ImportError:
        return False
    return True


def build(arch: str, spec: InputSpec, seed: int = 0) -> nn.Module:
    """build_model, skipping (importorskip-style) when the architecture's extra is missing."""
    extra = ARCHITECTURES[arch].extra
    if extra is not None:
        pytest.importorskip(EXTRA_MODULES[extra])
    if min(spec.height, spec.width) < MIN_SIDE.get(arch, 0):
        pytest.skip(f"{arch} needs inputs of at least {MIN_SIDE[arch]} pixels")
    return build_model(arch, spec, seed)


def spec_for(arch: str) -> InputSpec:
    """The smallest of our specs the architecture takes (8x8 for all but DenseNet)."""
    return SMALL if MIN_SIDE.get(arch, 0) <= 8 else SPECS["3x32x32/43"]


def images(spec: InputSpec, n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, *spec.shape, generator=torch.Generator().manual_seed(seed))


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("spec_name", list(SPECS))
@pytest.mark.parametrize("arch", ARCHS)
def test_output_shape(arch: str, spec_name: str) -> None:
    spec = SPECS[spec_name]
    model = build(arch, spec)
    assert not model.training, "build_model returns the model in eval mode"
    with torch.no_grad():
        out = model(images(spec, n=3))
    assert out.shape == (3, spec.num_classes)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("arch", [a for a in ARCHS if ARCHITECTURES[a].extra is not None])
def test_missing_extra_raises_import_error(arch: str) -> None:
    extra = ARCHITECTURES[arch].extra
    assert extra is not None
    spec = spec_for(arch)
    if extra_available(arch):
        with torch.no_grad():
            assert build_model(arch, spec)(images(spec)).shape == (3, spec.num_classes)
        return
    with pytest.raises(ImportError, match=rf"\b{extra}\b") as info:
        build_model(arch, spec)
    assert "misentry[" in str(info.value), "the message says how to install the extra"


@pytest.mark.parametrize("arch", ARCHS)
def test_same_seed_same_weights_other_seed_other_weights(arch: str) -> None:
    spec = spec_for(arch)
    torch.manual_seed(1)
    a = build(arch, spec, seed=5).state_dict()
    torch.manual_seed(2)  # the global RNG state must not matter
    b = build(arch, spec, seed=5).state_dict()
    c = build(arch, spec, seed=6).state_dict()
    assert list(a) == list(b) == list(c)
    for name in a:
        assert a[name].dtype == b[name].dtype
        assert torch.equal(a[name], b[name]), f"{name} differs between two builds with seed 5"
    model = build(arch, spec, seed=5)
    random_init = [
        f"{mod_name}.weight"
        for mod_name, module in model.named_modules()
        if isinstance(module, nn.Conv2d | nn.Linear)
    ]
    assert random_init
    same = [name for name in random_init if torch.equal(a[name], c[name])]
    assert not same, f"seeds 5 and 6 give identical {same}"


@pytest.mark.parametrize("arch", ARCHS)
def test_build_leaves_global_rng_alone(arch: str) -> None:
    spec = spec_for(arch)
    torch.manual_seed(1234)
    reference = torch.rand(8)
    torch.manual_seed(1234)
    before = torch.rand(4)
    build(arch, spec, seed=7)
    after = torch.rand(4)
    assert torch.equal(torch.cat([before, after]), reference)


@pytest.mark.parametrize("arch", ARCHS)
def test_normalize_layer_holds_spec_constants(arch: str) -> None:
    spec = SPECS["3x32x32/43"]
    model = build(arch, spec)
    norm = model.normalize
    assert isinstance(norm, Normalize)
    c = spec.channels
    assert torch.equal(norm.mean, torch.tensor(spec.mean, dtype=torch.float32).view(1, c, 1, 1))
    assert torch.equal(norm.std, torch.tensor(spec.std, dtype=torch.float32).view(1, c, 1, 1))
    assert {"normalize.mean", "normalize.std"} <= set(model.state_dict())
    x = images(spec)
    expected = torch.stack([(x[:, ch] - spec.mean[ch]) / spec.std[ch] for ch in range(c)], dim=1)
    torch.testing.assert_close(norm(x), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_normalize_is_applied_first(arch: str) -> None:
    spec = spec_for(arch)
    model = build(arch, spec)
    x = images(spec)

    calls: list[nn.Module] = []
    first_input: list[torch.Tensor] = []
    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(lambda m, _i, _o: calls.append(m)) for m in leaves]
    handles.append(
        model.normalize.register_forward_pre_hook(lambda _m, inputs: first_input.append(inputs[0]))
    )
    with torch.no_grad():
        out = model(x)
    for handle in handles:
        handle.remove()
    assert calls[0] is model.normalize, f"first layer applied is {type(calls[0]).__name__}"
    assert sum(m is model.normalize for m in calls) == 1
    assert torch.equal(first_input[0], x), "Normalize receives the raw input"

    # The rest of the network sees only Normalize's output: a copy with mean 0 and std 1 fed
    # the normalized images gives exactly the same logits.
    plain = copy.deepcopy(model)
    plain.normalize.mean.zero_()
    plain.normalize.std.fill_(1.0)
    with torch.no_grad():
        normalized = (x - model.normalize.mean) / model.normalize.std
        assert torch.equal(plain(normalized), out)


@pytest.mark.parametrize("spec_name", list(SPECS))
@pytest.mark.parametrize("arch", ARCHS)
def test_last_linear_is_the_output_layer(arch: str, spec_name: str) -> None:
    spec = SPECS[spec_name]
    model = build(arch, spec)
    name, layer = last_linear(model)
    assert isinstance(layer, nn.Linear)
    assert layer.out_features == spec.num_classes
    assert model.get_submodule(name) is layer
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.no_grad():
        out = model(images(spec))
    handle.remove()
    assert torch.equal(seen[-1], out), "the model's logits are the last Linear's output"


def test_last_linear_without_linear_raises() -> None:
    with pytest.raises(ValueError, match=r"Sequential has no linear output layer"):
        last_linear(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()))


def test_unknown_architecture_lists_known_names() -> None:
    with pytest.raises(KeyError, match="no_such_net") as info:
        build_model("no_such_net", SMALL)
    assert all(name in str(info.value) for name in ARCHITECTURES)
    assert get_arch("lenet5").name == "lenet5"


def test_lenet5_on_28x28_is_the_unpadded_classic() -> None:
    model = build_model("lenet5", SPECS["1x28x28/10"])
    assert model.fc1.in_features == 16 * 4 * 4 == 256
    # conv1 6@5x5, conv2 16@5x5, fc 256-120-84-10, all with biases. (61,706 is the count of the
    # padded 32x32 variant with 400 features into fc1, not of this one.)
    expected = (1 * 25 + 1) * 6 + (6 * 25 + 1) * 16 + 257 * 120 + 121 * 84 + 85 * 10
    assert n_params(model) == expected == 44_426


def test_lenet5_on_8x8_pads_its_convolutions() -> None:
    model = build_model("lenet5", SMALL)
    assert model.fc1.in_features == 16 * 2 * 2


def test_resnet20_size() -> None:
    model = build_model("resnet20", CIFAR)
    assert 260_000 < n_params(model) < 280_000
    n_convs = sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in model.modules())
    assert n_convs + 1 == 20, "19 3x3 convolutions and one linear layer"


def test_gtsrb_cnn_fc_sees_2048_features() -> None:
    model = build_model("gtsrb_cnn", SPECS["3x32x32/43"])
    assert model.fc.in_features == 2048
    assert model.fc.out_features == 43
