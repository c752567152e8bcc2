"""The fast paths change how numbers are computed, never which numbers come out (beyond rounding)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mobilenets.kernels import acceleration
from mobilenets.kernels.acceleration import (
    COMPILE_TRAINING_MIN_STEPS,
    prepare_for_inference,
    prepare_for_training,
    should_compile,
    to_model_layout,
    training_precision,
)
from mobilenets.models.factory import create_model
from mobilenets.models.fusion import fold_batchnorm_in_place

TINY_FAMILY = ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small"]


def tiny(name: str = "mobilenet_v3_small", num_classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=num_classes, width=0.25)


def with_trained_batchnorm(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters, as after training, so folding is exercised."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            channels = module.num_features
            module.running_mean.copy_(torch.randn(channels, generator=generator) * 0.5)
            module.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(channels, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(channels, generator=generator) * 0.1)
    return model.eval()


def images(batch: int = 4, size: int = 64) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("name", TINY_FAMILY)
def test_fused_inference_model_equals_eager(name):
    model = with_trained_batchnorm(tiny(name))
    x = images()
    with torch.no_grad():
        expected = model(x)
    fast = prepare_for_inference(model, compile=False)
    actual = fast(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    assert actual.argmax(1).tolist() == expected.argmax(1).tolist()


def test_prepare_for_inference_leaves_the_original_untouched():
    model = with_trained_batchnorm(tiny())
    batchnorms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    fast = prepare_for_inference(model, compile=False)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == batchnorms
    assert fast.num_classes == model.num_classes == 5
    assert fast.model.classifier.weight.is_contiguous()
    assert next(fast.model.stem.parameters()).is_contiguous(memory_format=torch.channels_last)


def test_fuse_conv_bn_counts_every_conv_bn_pair():
    model = with_trained_batchnorm(tiny("mobilenet_v1"))
    batchnorms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert batchnorms == 27  # stem + 13 depthwise-separable blocks × 2 (paper Table 1)
    fold_batchnorm_in_place(model)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 0
    assert sum(isinstance(m, nn.Conv2d) and m.bias is not None for m in model.modules()) == 27


def test_inference_from_a_model_prepared_for_bf16_training_is_fp32():
    model = prepare_for_training(with_trained_batchnorm(tiny()), precision="bf16", compile=False).eval()
    reference = with_trained_batchnorm(tiny()).eval()
    fast = prepare_for_inference(model, compile=False)
    assert not any("forward" in vars(module) for module in fast.model.modules())
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(fast(x), reference(x), rtol=1e-4, atol=1e-5)


def test_prepare_for_training_keeps_the_module_its_keys_and_fp32_weights():
    model = tiny()
    keys = list(model.state_dict())
    prepared = prepare_for_training(model, precision="bf16", compile=False)
    assert prepared is model
    assert list(prepared.state_dict()) == keys
    assert all(p.dtype == torch.float32 for p in prepared.parameters())
    assert prepared.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert prepared.training_precision == "bfloat16"
    assert prepared(to_model_layout(images(2))).dtype == torch.float32  # the loss is computed in fp32


def test_bf16_forward_stays_close_to_fp32():
    fp32 = prepare_for_training(with_trained_batchnorm(tiny()), precision="fp32", compile=False).eval()
    bf16 = prepare_for_training(with_trained_batchnorm(tiny()), precision="bf16", compile=False).eval()
    x = to_model_layout(images(8))
    with torch.no_grad():
        a, b = fp32(x), bf16(x)
    # bf16 keeps 8 mantissa bits: ~0.4% per rounding, a few percent after a dozen layers.
    assert (a - b).abs().max() <= 0.05 * a.abs().max()


def test_a_deep_copy_runs_on_its_own_weights():
    """EMA (torch.optim.swa_utils.AveragedModel) deep-copies the prepared model."""
    model = prepare_for_training(tiny(), precision="bf16", compile=False).eval()
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in twin.parameters():
            parameter.zero_()
        x = to_model_layout(images(2))
        assert twin(x).abs().max() == 0
        assert model(x).abs().max() > 0


def twelve_training_steps(model: nn.Module) -> list[float]:
    """Losses of 12 AdamW steps on one fixed batch of a 4-class problem."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = to_model_layout(images(16, 32))
    y = torch.arange(16) % 4
    losses = []
    for _ in range(12):
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_step_gives_finite_decreasing_loss(precision):
    torch.manual_seed(0)
    model = prepare_for_training(tiny(num_classes=4), precision=precision, compile=False).train()
    losses = twelve_training_steps(model)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.7 * losses[0]


def test_precision_follows_the_cpu_and_the_override(monkeypatch):
    monkeypatch.delenv("MOBILENETS_BF16", raising=False)
    monkeypatch.setattr(acceleration, "cpu_supports_bf16", lambda: False)
    assert training_precision() == torch.float32
    monkeypatch.setattr(acceleration, "cpu_supports_bf16", lambda: True)
    assert training_precision() == torch.bfloat16
    assert training_precision("fp32") == torch.float32
    monkeypatch.setenv("MOBILENETS_BF16", "0")
    assert training_precision() == torch.float32
    assert training_precision(device="meta") == torch.float32  # bf16 autocast is a CPU (or CUDA) decision


def test_compile_is_decided_by_run_length_and_overrides(monkeypatch):
    monkeypatch.delenv("MOBILENETS_COMPILE", raising=False)
    monkeypatch.setattr(acceleration, "compile_available", lambda: True)
    assert not should_compile(None)
    assert not should_compile(COMPILE_TRAINING_MIN_STEPS - 1)
    assert should_compile(COMPILE_TRAINING_MIN_STEPS)
    assert not should_compile(10**6, compile=False)
    assert should_compile(1, compile=True)
    monkeypatch.setenv("MOBILENETS_COMPILE", "0")
    assert not should_compile(10**6)
    monkeypatch.setenv("MOBILENETS_COMPILE", "1")
    assert should_compile(1)


def test_without_a_compiler_compile_falls_back_to_eager(monkeypatch):
    monkeypatch.setattr(acceleration.shutil, "which", lambda _name: None)
    assert not acceleration.compile_available()
    model = prepare_for_training(tiny(), compile=True, precision="fp32")
    assert model.compiled is False
    assert model(to_model_layout(images(2))).shape == (2, 5)
    fast = prepare_for_inference(with_trained_batchnorm(tiny()), compile=True)
    assert fast.compiled is False
    assert fast(images(2)).shape == (2, 5)


def test_threads_are_set_to_the_usable_cores(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert acceleration.configure_threads() == 1
        assert acceleration.configure_threads(2) == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_compiled_bf16_training_step_gives_finite_decreasing_loss():
    torch.manual_seed(0)
    model = prepare_for_training(tiny(num_classes=4), compile=True, precision="bf16").train()
    assert model.compiled
    losses = twelve_training_steps(model)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.7 * losses[0]
    assert list(model.state_dict()) == list(tiny(num_classes=4).state_dict())


@pytest.mark.slow
def test_compiled_inference_model_equals_eager():
    model = with_trained_batchnorm(tiny())
    x = images()
    with torch.no_grad():
        expected = model(x)
    fast = prepare_for_inference(model, compile=True)
    assert fast.compiled
    torch.testing.assert_close(fast(x), expected, rtol=1e-4, atol=1e-4)


def test_thread_count_is_probed_once_and_prefers_the_faster(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(acceleration.os, "sched_getaffinity", lambda _pid: {0, 1})
    monkeypatch.setattr(acceleration, "_chosen_threads", None)
    # Busy cores: one thread is faster than two.
    monkeypatch.setattr(acceleration, "_probe_seconds", lambda threads, rounds=3: {1: 0.01, 2: 0.05}[threads])
    try:
        assert acceleration.configure_threads() == 1
        # Decided once per process: later calls do not re-probe while this process itself loads the cores.
        monkeypatch.setattr(acceleration, "_probe_seconds", lambda threads, rounds=3: {1: 0.05, 2: 0.01}[threads])
        assert acceleration.configure_threads() == 1
        monkeypatch.setattr(acceleration, "_chosen_threads", None)
        assert acceleration.configure_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_bf16_training_keeps_depthwise_convolutions_in_fp32():
    """Without the fused kernels (which compute depthwise layers in fp32 themselves, tests/test_kernels.py)."""
    model = prepare_for_training(tiny("mobilenet_v2"), precision="bf16", compile=False, fused=False).train()
    dtypes: dict[str, torch.dtype] = {}
    hooks = [
        module.register_forward_hook(lambda m, _i, out, name=name: dtypes.__setitem__(name, out.dtype))
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d)
    ]
    with acceleration.autocast_for(model):  # the training step's autocast
        model(to_model_layout(images(2, 32)))
    for hook in hooks:
        hook.remove()
    depthwise = {name for name, m in model.named_modules() if acceleration.is_depthwise(m)}
    assert len(depthwise) == 17  # one per inverted-residual block (V2 paper Table 2)
    assert all(dtypes[name] == torch.float32 for name in depthwise)
    assert all(dtype == torch.bfloat16 for name, dtype in dtypes.items() if name not in depthwise)


def test_an_automatic_thread_count_is_rechecked_between_batches(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(acceleration.os, "sched_getaffinity", lambda _pid: {0, 1})
    monkeypatch.setattr(acceleration, "_chosen_threads", None)
    monkeypatch.setattr(acceleration, "_threads_chosen_automatically", False)
    busy = {"now": False}
    monkeypatch.setattr(
        acceleration,
        "_probe_seconds",
        lambda threads, rounds=3: (0.05 if busy["now"] else 0.01) if threads > 1 else 0.02,
    )
    try:
        assert acceleration.configure_threads() == 2
        busy["now"] = True  # another job starts
        to_model_layout(images(1, 8))
        assert torch.get_num_threads() == 2  # not due yet
        monkeypatch.setattr(acceleration, "_last_thread_check", 0.0)
        to_model_layout(images(1, 8))
        assert torch.get_num_threads() == 1
        # An explicit count is never second-guessed.
        acceleration.configure_threads(2)
        monkeypatch.setattr(acceleration, "_last_thread_check", 0.0)
        to_model_layout(images(1, 8))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
