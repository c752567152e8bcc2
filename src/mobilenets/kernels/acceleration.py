"""Making the same model fast on the machine at hand, for training and for inference.

One place decides memory format, compilation, reduced precision and threads, so that the training
loop, evaluation, prediction and the benchmarks all take the product's default fast path. Every choice
here was measured on a 2-core AVX-512 CPU (see docs/performance.md and BENCHMARKS.md); each one has an
override (keyword argument or environment variable) and a clean fallback when the machine lacks it.

- channels_last: depthwise and 1×1 convolutions in oneDNN run about twice as fast in NHWC (BENCHMARKS.md).
- bf16 autocast for training on CPUs with native bf16 (AVX-512-BF16 / AMX); BatchNorm, the loss and the
  weights stay fp32.
- ``torch.compile`` when the planned run is long enough for its compile time to pay back.
- Inference: Conv+BN folded into one convolution, channels_last, and ``torch.compile`` with freezing
  for long-running serving.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import statistics
import time
from collections.abc import Iterator
from typing import Literal

import torch
from torch import nn

from mobilenets import kernels
from mobilenets.core.settings import env_flag, usable_cpu_count
from mobilenets.models.fusion import fold_batchnorm_in_place

Precision = Literal["auto", "fp32", "bf16", "fp16"]

# torch.compile pays back only when (eager step − compiled step) × steps exceeds the compile time.
# Measured (benchmarks/cpu_training.py --compile, 2 cores, load ≈2): compiling MobileNetV3-Small's
# bf16 training step at 224 px took 70 s and saved 19 ms of a 302 ms step, paying back after ~3,600
# steps. Inference (prepare_for_inference): 17-19 s to compile, 16 ms saved per batch of 32 (60.7 →
# 44.4 ms), paying back after ~1,100 batches. A CLI predicting a handful of images never compiles.
COMPILE_TRAINING_MIN_STEPS = 4000
COMPILE_INFERENCE_MIN_BATCHES = 2000




def cpu_supports_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX-512-BF16 or AMX) and oneDNN is there to use it.

    Without native support, bf16 is emulated and slower than fp32, so we stay in fp32.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def compile_available() -> bool:
    """torch.compile's CPU backend generates C++ and needs a compiler; Dynamo needs a supported Python."""
    try:
        import torch._dynamo

        supported = torch._dynamo.is_dynamo_supported()
    except Exception:
        return False
    return supported and any(shutil.which(cxx) for cxx in ("c++", "g++", "clang++"))


def _probe_seconds(threads: int, rounds: int = 3) -> float:
    """Median time of a MobileNet-like burst of small parallel ops (1×1 convs on a 28×28 map) at ``threads``."""
    torch.set_num_threads(threads)
    weight = torch.randn(64, 64, 1, 1).contiguous(memory_format=torch.channels_last)
    x = torch.randn(4, 64, 28, 28).contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode():
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(30):
                torch.nn.functional.conv2d(x, weight)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


_chosen_threads: int | None = None
_threads_chosen_automatically = False
_last_thread_check = 0.0
# Other jobs come and go during a run: the automatic choice is re-probed this often (a probe costs
# ~0.05 s on a quiet machine). One Fashion-MNIST run here had 36 s epochs on a quiet machine and a
# 738 s epoch while other jobs shared its 2 cores: a count chosen once at start cannot follow that.
THREAD_RECHECK_SECONDS = 30.0


def configure_threads(num_threads: int | None = None) -> int:
    """Choose the intra-op thread count once per process; a single inter-op thread. Returns the count.

    Default: one thread per core this process may use, unless the cores are busy with other work. A
    MobileNet step is hundreds of short parallel regions, and each waits for its slowest thread: when
    another process holds a core, a 2-thread step measured 5-10× slower than a 1-thread one on the
    2-core reference machine (docs/performance.md). So the default times a short probe (~0.1 s) at
    both counts and keeps the faster. ``OMP_NUM_THREADS`` or ``num_threads`` skip the probe.
    MobileNet graphs are chains: inter-op parallelism would only compete for the same cores.
    """
    global _chosen_threads, _threads_chosen_automatically, _last_thread_check
    with contextlib.suppress(RuntimeError):  # only settable before the first parallel region
        torch.set_num_interop_threads(1)
    env = os.environ.get("OMP_NUM_THREADS", "")
    if num_threads is None and env.isdigit():
        num_threads = int(env)
    if num_threads is not None:
        _threads_chosen_automatically = False  # the user's or environment's count is never second-guessed
    if num_threads is None and _chosen_threads is not None:
        num_threads = _chosen_threads
    if num_threads is None:
        num_threads = _probe_thread_count()
        _chosen_threads, _threads_chosen_automatically = num_threads, True
        _last_thread_check = time.monotonic()
    torch.set_num_threads(max(1, num_threads))
    return torch.get_num_threads()


def _probe_thread_count() -> int:
    cores = usable_cpu_count()
    if cores == 1 or os.environ.get("MOBILENETS_THREAD_PROBE", "1") == "0":
        return cores
    _probe_seconds(cores, rounds=1)  # first call pays oneDNN primitive creation
    return 1 if _probe_seconds(1) < _probe_seconds(cores) else cores


def retune_threads_if_due() -> None:
    """Re-probe an automatically chosen thread count every ``THREAD_RECHECK_SECONDS`` (between steps)."""
    global _chosen_threads, _last_thread_check
    if not _threads_chosen_automatically or time.monotonic() - _last_thread_check < THREAD_RECHECK_SECONDS:
        return
    _chosen_threads = _probe_thread_count()
    torch.set_num_threads(_chosen_threads)
    _last_thread_check = time.monotonic()


def training_precision(precision: Precision = "auto", device: torch.device | str = "cpu") -> torch.dtype:
    """The autocast dtype for training: bf16 where the CPU has it natively (``MOBILENETS_BF16`` overrides)."""
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if torch.device(device).type == "cuda":
        # GPUs: bf16 where the hardware has it (Ampere and later); fp16 with a loss scaler before that.
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if torch.device(device).type != "cpu":
        return torch.float32
    forced = env_flag("MOBILENETS_BF16")
    use_bf16 = cpu_supports_bf16() if forced is None else forced
    return torch.bfloat16 if use_bf16 else torch.float32


def use_fused_kernels(fused: bool | None = None) -> bool:
    """Whether training routes ConvBNAct layers through ``mobilenets.kernels``: explicit choice, then
    ``MOBILENETS_FUSED_KERNELS``, then on. False where the C++ extension cannot be built."""
    if fused is None:
        fused = env_flag("MOBILENETS_FUSED_KERNELS")
    return fused is not False and kernels.available()


def should_compile(
    planned_steps: int | None, compile: bool | None = None, min_steps: int = COMPILE_TRAINING_MIN_STEPS
) -> bool:
    """Decide whether compiling pays back: explicit choice, then ``MOBILENETS_COMPILE``, then run length."""
    if compile is None:
        compile = env_flag("MOBILENETS_COMPILE")
    if compile is None:
        compile = planned_steps is not None and planned_steps >= min_steps
    return bool(compile) and compile_available()


def is_depthwise(module: nn.Module | None) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def prepare_for_training(
    model: nn.Module,
    device: torch.device | str = "cpu",
    *,
    planned_steps: int | None = None,
    compile: bool | None = None,
    precision: Precision = "auto",
    fused: bool | None = None,
) -> nn.Module:
    """Put ``model`` on ``device`` in the product's fastest training configuration, in place.

    The same module comes back (same parameters, same ``state_dict`` keys), so optimizers, EMA and
    ``save_weights`` work unchanged. ``planned_steps`` lets the compile decision weigh compile time
    against the run's length; ``compile``/``precision`` override the automatic choices. On a CPU, every
    ConvBNAct and squeeze-and-excitation block runs through ``mobilenets.kernels`` (``fused=False`` or
    ``MOBILENETS_FUSED_KERNELS=0`` turn that off); ``model.fused_layers`` says how many.
    """
    configure_threads()
    model = model.to(device=device, memory_format=torch.channels_last)
    dtype = training_precision(precision, device)
    on_cpu = torch.device(device).type == "cpu"
    # Inductor cannot trace the fused kernels, and on the CPUs measured they beat it (docs/performance.md):
    # a run compiles (long runs, or compile=True / MOBILENETS_COMPILE=1) only without them.
    asked_to_compile = compile if compile is not None else env_flag("MOBILENETS_COMPILE")
    compiled = should_compile(planned_steps, compile) and (asked_to_compile is True or fused is False or not on_cpu)
    fuse = on_cpu and not compiled and use_fused_kernels(fused)
    model.fused_layers = kernels.fuse_for_training(model) if fuse else 0
    if dtype != torch.float32 and on_cpu and not model.fused_layers:
        # oneDNN's bf16 depthwise backward is slow on CPU: with every conv in bf16, V3-Small's convolution
        # backward took 1.05 s per step against 0.30 s in fp32, nearly all of it depthwise (5×5 worst;
        # docs/performance.md). Depthwise convs are ~3% of the MACs, so they stay fp32 and the 1×1
        # convs, ~95% of the MACs (MobileNet v1 Table 2), run in bf16. (The fused kernels compute
        # depthwise layers in fp32 themselves, reading and writing bf16.)
        for module in model.modules():
            if hasattr(module, "depthwise_in_float32") and is_depthwise(getattr(module, "conv", None)):
                module.depthwise_in_float32 = True
    # Autocast is applied around the training step's forward (``autocast_for``), not baked into the model,
    # so evaluation and export always see the fp32 model as saved.
    model.training_precision = str(dtype).removeprefix("torch.")
    model.compiled = compiled
    if compiled:
        # A graph that dynamo cannot capture or a failing C++ build falls back to eager, not an error.
        torch._dynamo.config.suppress_errors = True
    return model


def training_step_model(model: nn.Module) -> nn.Module:
    """What the training step calls: ``model`` itself, or a compiled wrapper sharing its parameters when
    ``prepare_for_training`` chose to compile (the module itself is never changed by compiling)."""
    return torch.compile(model) if getattr(model, "compiled", False) else model


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters live (the CPU for a model without any)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def to_model_layout(images: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """Put a batch in the layout ``prepare_for_training`` chose, on ``device`` when given.

    Batches are decoded and augmented on the CPU; a model on a GPU gets each one copied over here.
    Called once per batch between steps, it is also where an automatic thread count is re-checked
    (at most every ``THREAD_RECHECK_SECONDS``), so a run adapts when other jobs start or stop.
    """
    retune_threads_if_due()
    if device is not None:
        images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last)


@contextlib.contextmanager
def autocast_for(model: nn.Module) -> Iterator[None]:
    """The training step's autocast, as ``prepare_for_training`` chose it (bf16, fp16 on CUDA, or none)."""
    precision = getattr(model, "training_precision", "float32")
    device_type = model_device(model).type
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(precision)
    with torch.autocast(device_type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        yield


class InferenceModel(nn.Module):
    """A frozen, fused, channels_last copy of a classifier; call it like the original model.

    Runs without autograd and accepts NCHW batches in any layout.
    """

    def __init__(self, model: nn.Module, compiled: bool) -> None:
        super().__init__()
        self.model = model
        self.compiled = compiled
        self.num_classes = getattr(model, "num_classes", None)
        self.metadata = getattr(model, "metadata", None)
        self._forward = torch.compile(model, options={"freezing": True}) if compiled else model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self._forward(images.contiguous(memory_format=torch.channels_last))


def prepare_for_inference(
    model: nn.Module, *, planned_batches: int | None = None, compile: bool | None = None
) -> InferenceModel:
    """A fast inference copy of ``model`` (the original is untouched): Conv+BN fused, channels_last,
    and compiled with weight freezing when ``planned_batches`` makes the compile time worth it.

    Outputs equal the eager model's within fp32 rounding (tests/test_acceleration.py).
    """
    configure_threads()
    fused = kernels.unfuse(copy.deepcopy(model).eval())
    fused = fold_batchnorm_in_place(fused).to(memory_format=torch.channels_last)
    for parameter in fused.parameters():
        parameter.requires_grad_(False)
    compiled = should_compile(planned_batches, compile, min_steps=COMPILE_INFERENCE_MIN_BATCHES)
    if compiled:
        torch._dynamo.config.suppress_errors = True
    return InferenceModel(fused, compiled)
