"""The model registry: shapes, the `head` every method relies on, exact parameter counts of the
literature's networks (computed here by formula), errors for inputs a model cannot take, and a
training step that learns."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lifelong.errors import ConfigError
from lifelong.models import MODELS, build_model

# Small settings per model so that every check runs in milliseconds.
TINY = {"mlp": {"hidden": (12,)}, "cnn": {"hidden": (12,), "width": 3},
        "resnet18": {"width": 2}}
IMAGE = {"mlp": (1, 10, 10), "cnn": (1, 10, 10), "resnet18": (3, 8, 8)}


def tiny(name: str, input_shape=None, outputs: int = 5, **options) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, input_shape or IMAGE[name], outputs, **{**TINY[name], **options})


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv_params(cin: int, cout: int, k: int, bias: bool) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def bn_params(channels: int) -> int:
    return 2 * channels  # weight and bias


def reduced_resnet18_parameters(nf: int, channels: int, classes: int) -> int:
    """Lopez-Paz & Ranzato's ResNet-18, counted layer by layer: 3x3 stem conv (no bias) + BN;
    four stages of two BasicBlocks (two 3x3 convs + BN each; a 1x1 conv + BN shortcut where
    the width or the stride changes); Linear(8nf → classes) with bias."""
    total = conv_params(channels, nf, 3, False) + bn_params(nf)
    planes_in = nf
    for stage, planes in enumerate((nf, 2 * nf, 4 * nf, 8 * nf)):
        for block in range(2):
            cin = planes_in if block == 0 else planes
            total += conv_params(cin, planes, 3, False) + bn_params(planes)
            total += conv_params(planes, planes, 3, False) + bn_params(planes)
            if block == 0 and (stage > 0 or cin != planes):
                total += conv_params(cin, planes, 1, False) + bn_params(planes)
        planes_in = planes
    return total + 8 * nf * classes + classes


def test_registry_lists_every_model_with_a_description() -> None:
    assert set(MODELS) == {"mlp", "cnn", "resnet18"}
    assert all(isinstance(text, str) and text for text in MODELS.values())


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("batch_norm", [False, True])
def test_output_shape_and_head(name: str, batch_norm: bool) -> None:
    model = tiny(name, outputs=7, batch_norm=batch_norm)
    x = torch.randn(4, *IMAGE[name])
    assert model(x).shape == (4, 7)
    assert isinstance(model.head, nn.Linear) and model.head.out_features == 7
    # the head is the last weight layer registered (CBP, UPGD and SPG read the module order)
    weights = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert weights[-1] is model.head
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bool(norms) == batch_norm


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28), (28, 28), (3, 12, 16)])
def test_conv_models_take_images_and_one_channel_images(name: str, shape) -> None:
    model = tiny(name, input_shape=shape)
    assert model(torch.randn(2, *shape)).shape == (2, 5)
    if len(shape) == 2:  # MNIST's (H, W) layout, or its flat rows: one channel
        assert model(torch.randn(2, shape[0] * shape[1])).shape == (2, 5)


def test_reduced_resnet18_has_the_literatures_parameter_count() -> None:
    expected = reduced_resnet18_parameters(nf=20, channels=3, classes=100)
    assert expected == 1_109_240  # "about 1.1M" (GEM, A-GEM)
    model = build_model("resnet18", (3, 32, 32), 100)
    assert count(model) == expected
    assert model.head.in_features == 160  # 8·nf
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 1 + 4 * 2 * 2 + 3  # stem, two per block, three shortcuts


@pytest.mark.parametrize("nf,channels,classes", [(4, 1, 7), (8, 3, 10), (64, 3, 10)])
def test_resnet18_width_is_nf(nf: int, channels: int, classes: int) -> None:
    model = build_model("resnet18", (channels, 8, 8), classes, width=nf)
    assert count(model) == reduced_resnet18_parameters(nf, channels, classes)
    stem = model.conv1
    assert (stem.kernel_size, stem.stride, stem.out_channels) == ((3, 3), (1, 1), nf)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


def test_resnet18_shapes_inside() -> None:
    """Stride 1 stem, no max-pool, stages at 32, 16, 8, 4 pixels for a 32x32 image."""
    model = build_model("resnet18", (3, 32, 32), 10, width=2)
    sizes = []
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        stage.register_forward_hook(lambda m, a, out: sizes.append(tuple(out.shape[1:])))
    model(torch.randn(1, 3, 32, 32))
    assert sizes == [(2, 32, 32), (4, 16, 16), (8, 8, 8), (16, 4, 4)]


@pytest.mark.parametrize("shape,flat", [((3, 32, 32), 2304), ((1, 28, 28), 1600)])
def test_cnn_is_zenke_et_al_s_network(shape, flat: int) -> None:
    model = build_model("cnn", shape, 10, (512,))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64]
    assert [c.padding for c in convs] == [(1, 1), (0, 0), (1, 1), (0, 0)]
    assert [c.kernel_size for c in convs] == [(3, 3)] * 4
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 2
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(flat, 512), (512, 10)]
    c = shape[0]
    expected = (conv_params(c, 32, 3, True) + conv_params(32, 32, 3, True)
                + conv_params(32, 64, 3, True) + conv_params(64, 64, 3, True)
                + flat * 512 + 512 + 512 * 10 + 10)
    assert count(model) == expected  # 1,250,858 for CIFAR


def test_cnn_batch_norm_follows_every_conv_and_hidden_layer() -> None:
    model = build_model("cnn", (3, 32, 32), 10, (20, 10), width=4, batch_norm=True)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 4
    assert [m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm1d)] == [20, 10]
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))


def test_dropout_is_applied_where_documented() -> None:
    cnn = build_model("cnn", (1, 28, 28), 10, (8,), width=2, dropout=0.3)
    assert sum(isinstance(m, nn.Dropout) for m in cnn.modules()) == 3  # 2 pools + 1 hidden
    mlp = build_model("mlp", (4,), 3, (5, 5), dropout=0.3, batch_norm=True)
    kinds = [type(m).__name__ for m in mlp.body]
    assert kinds == ["Flatten", "Linear", "BatchNorm1d", "ReLU", "Dropout",
                     "Linear", "BatchNorm1d", "ReLU", "Dropout"]


@pytest.mark.parametrize("name,shape,message", [
    ("resnet18", (784,), r"\(C, H, W\).*784.*mlp"),
    ("cnn", (784,), r"\(C, H, W\).*784"),
    ("cnn", (32, 32, 3), "channels-last"),
    ("resnet18", (28, 28, 1), "channels-last"),
    ("cnn", (3, 9, 9), "at least 10x10"),
    ("cnn", (3, 32, 8), "at least 10x10"),
    ("resnet18", (2, 3, 32, 32), r"\(C, H, W\)"),
])
def test_input_shapes_a_model_cannot_take_are_refused_at_build_time(name, shape, message) -> None:
    with pytest.raises(ConfigError, match=message):
        build_model(name, shape, 10)


@pytest.mark.parametrize("kwargs,message", [
    ({"name": "resnet"}, "did you mean 'resnet18'"),
    ({"name": "mlp", "width": 8}, "no width option"),
    ({"name": "cnn", "width": 0}, "positive"),
    ({"name": "resnet18", "dropout": 0.5}, "no dropout"),
    ({"name": "cnn", "hidden": (0,)}, "positive"),
    ({"name": "cnn", "dropout": 1.0}, r"\[0, 1\)"),
])
def test_bad_options_are_refused(kwargs, message) -> None:
    kwargs = {"input_shape": (3, 32, 32), "num_outputs": 10, **kwargs}
    with pytest.raises(ConfigError, match=message):
        build_model(**kwargs)


def test_build_model_keeps_its_positional_signature() -> None:
    """The experiment and the stream runner call build_model(name, shape, outputs, hidden,
    dropout) positionally."""
    model = build_model("mlp", (6,), 3, (4,), 0.0)
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [4, 3]
    assert build_model("resnet18", (3, 8, 8), 3, (400, 400), 0.0).head.in_features == 160


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("batch_norm", [False, True])
def test_training_steps_reduce_the_loss(name: str, batch_norm: bool) -> None:
    model = tiny(name, batch_norm=batch_norm)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(16, *IMAGE[name], generator=generator)
    y = torch.randint(0, 5, (16,), generator=generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()

    def loss() -> torch.Tensor:
        return F.cross_entropy(model(x), y)

    first = loss().item()
    for _ in range(60):  # stops as soon as the loss has halved
        optimizer.zero_grad()
        value = loss()
        if value.item() < 0.5 * first:
            break
        value.backward()
        optimizer.step()
    assert loss().item() < 0.5 * first
