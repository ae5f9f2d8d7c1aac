"""Placement without a GPU: every expert and router beside the module it serves, in the right dtype,
and every tensor reached by `.to()` — shown with float64, the meta device and a per-layer dtype split
that stands in for a base spread over devices by `device_map="auto"`."""

from __future__ import annotations

import torch
from conftest import VOCAB, randomize_mocae, tiny_model
from torch import nn

from alignx_demo.config import RoutingSettings
from alignx_demo.modeling import MoCaEModel
from alignx_demo.modeling.calibration import CalibrationStack, PooledTemperature, TemperatureScaling
from alignx_demo.modeling.geometry import FractalGeometry, NaturalGeometry
from alignx_demo.modeling.layer import expert_dtype

IDS = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(5))


def full_calibration(n_layers: int = 2, width: int = 128, d: int = 4) -> CalibrationStack:
    """Every calibration part, with random but valid tensors."""
    g = torch.Generator().manual_seed(0)
    mean, comps = torch.randn(n_layers, width, generator=g), torch.randn(n_layers, d, width, generator=g) / width
    natural = NaturalGeometry(mean, comps, torch.randn(n_layers, 3, d, generator=g), torch.eye(d).repeat(n_layers, 1, 1),
                              torch.log(torch.full((n_layers, 3), 1 / 3)))
    fractal = FractalGeometry(mean, comps, torch.randn(n_layers, 40, d, generator=g), torch.full((n_layers,), 3.0),
                              torch.ones(n_layers), k=5)
    return CalibrationStack(TemperatureScaling(torch.tensor([2.0, 0.5])), [natural, fractal], PooledTemperature(1.5))


def routed_logits(mocae: MoCaEModel, settings: RoutingSettings = RoutingSettings()) -> torch.Tensor:
    with torch.no_grad(), mocae.routed(settings):
        return mocae(input_ids=IDS).logits


def test_to_float64_reaches_every_expert_router_and_calibration_tensor():
    mocae = MoCaEModel(tiny_model("llama"), calibration=full_calibration())
    randomize_mocae(mocae)
    expected = routed_logits(mocae)
    mocae.to(torch.float64)
    tensors = dict(mocae.named_parameters()) | dict(mocae.named_buffers())
    assert any(name.startswith("calibration.") for name in tensors)
    wrong = [name for name, t in tensors.items() if t.is_floating_point() and t.dtype != torch.float64]
    assert not wrong, wrong
    got = routed_logits(mocae)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got.float(), expected, rtol=1e-4, atol=1e-4)


def test_meta_build_creates_every_expert_and_router_on_the_meta_device():
    with torch.device("meta"):
        model = tiny_model("qwen2")
    mocae = MoCaEModel(model, calibration=full_calibration())
    tensors = [*mocae.expert_parameters(), *mocae.routers.parameters(), *mocae.calibration.buffers()]
    assert tensors and all(t.device.type == "meta" for t in tensors)


def test_layers_on_two_devices_keep_their_experts_and_routers_beside_them():
    """Layer 1 on another device (the meta device here): its experts and router are built there, layer 0's on the CPU."""
    model = tiny_model("llama")
    model.model.layers[1].to("meta")
    mocae = MoCaEModel(model)
    for name, module in mocae.expert_modules.items():
        device = module.base.weight.device
        assert module.lora_A.device == device and module.lora_B.device == device, name
        assert device.type == ("meta" if ".layers.1." in name else "cpu"), name
    assert [next(r.parameters()).device.type for r in mocae.routers] == ["cpu", "meta"]


class CastInputs:
    """What accelerate's device hooks do for a layer on another device: the layer's `forward` replaced
    by one that converts the inputs, so they change after its forward pre-hooks ran (here to the
    layer's dtype instead of its device)."""

    def __init__(self, layer: nn.Module, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.forward_of_layer = layer.forward

    def __call__(self, hidden_states, *args, **kwargs):
        return self.forward_of_layer(hidden_states.to(self.dtype), *args, **kwargs)


def test_a_layer_in_another_dtype_routes_and_matches_the_uniform_model():
    """Layer 0 in float64 and layer 1 in float32, inputs converted inside each layer's call: each
    layer's experts take its dtype, routers stay fp32 and read the hidden state wherever it comes
    from, and the logits match the all-float64 model."""
    reference = MoCaEModel(tiny_model("llama"))
    randomize_mocae(reference)
    model = tiny_model("llama")
    mocae = MoCaEModel(model)
    mocae.load_state_dict(reference.state_dict())
    model.model.layers[0].to(torch.float64)
    for layer in model.model.layers:
        layer.forward = CastInputs(layer, next(layer.parameters()).dtype)
    model.model.norm.forward = CastInputs(model.model.norm, torch.float32)
    for name, module in mocae.expert_modules.items():
        assert module.lora_A.dtype == (torch.float64 if ".layers.0." in name else torch.float32), name
    assert all(r.proj.weight.dtype == torch.float32 for r in mocae.routers)
    reference.to(torch.float64)
    with torch.no_grad(), mocae.routed(RoutingSettings()), reference.routed(RoutingSettings()):
        got = mocae(input_ids=IDS).logits
        want = reference(input_ids=IDS).logits
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


def test_experts_take_the_compute_dtype_on_cuda_and_fp32_on_cpu():
    """bf16 on CUDA (a bf16 base or a 4-bit base computing in bf16), fp32 on the CPU for half precision."""
    bf16 = nn.Linear(4, 4, dtype=torch.bfloat16)
    assert expert_dtype(bf16, torch.device("cpu")) == torch.float32
    assert expert_dtype(bf16, torch.device("cuda")) == torch.bfloat16
    assert expert_dtype(nn.Linear(4, 4, dtype=torch.float64), torch.device("cpu")) == torch.float64

    class FourBit(nn.Linear):  # bitsandbytes' Linear4bit: packed uint8 weights and a compute_dtype
        compute_dtype = torch.bfloat16

    packed = FourBit(4, 4)
    packed.weight = nn.Parameter(torch.zeros(8, 1, dtype=torch.uint8), requires_grad=False)
    assert expert_dtype(packed, torch.device("cuda")) == torch.bfloat16
    assert expert_dtype(packed, torch.device("cpu")) == torch.float32
    with torch.device("meta"):
        model = tiny_model("llama").to(torch.bfloat16)
    mocae = MoCaEModel(model)  # on meta the base's dtype is kept: bf16
    assert all(p.dtype == torch.bfloat16 for p in mocae.expert_parameters())
    fp32 = MoCaEModel(tiny_model("llama").to(torch.bfloat16))  # a bf16 base on the CPU: fp32 experts
    assert all(p.dtype == torch.float32 for p in fp32.expert_parameters())
    assert routed_logits(fp32).dtype == torch.bfloat16
