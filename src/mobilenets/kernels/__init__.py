"""Fused CPU training kernels: Conv → BatchNorm → activation as one autograd op per layer, and the batch.

A MobileNet training step on a CPU is bound by memory traffic: PyTorch runs every ``ConvBNAct`` as
separate passes (convolution, BatchNorm statistics, normalization, activation, and bf16↔fp32 casts
around the fp32 depthwise convolutions), each reading and writing the whole activation tensor, and
oneDNN's depthwise weight gradient takes 5–40× its forward pass for 5×5 kernels (docs/performance.md).
``conv_bn_act.cpp`` computes the same function in fewer passes, in NHWC, with fp32 arithmetic:

- depthwise ConvBNAct: the convolution writes y and its batch sums in one pass, then z = act(BN(y));
  backward makes one reduction pass over (dz, y), then per image forms dy into a buffer, accumulates
  the weight gradient and gathers dx from it, so dy is never stored.
- other ConvBNAct (1×1 and the stem): the convolution stays PyTorch's (oneDNN, bf16 under autocast);
  BatchNorm and the activation run as one forward pass after the statistics, and two backward passes.

- squeeze-and-excitation: the gate's gradient is one reduction over (dout, x) and dx one pass,
  instead of PyTorch's three full-size temporaries.
- the training batch: crop, flip, colour jitter and normalisation of the uint8 cache in one kernel
  (``augment_crop_flip_jitter``, used by ``BatchAugment.normalized``).

``int8_inference.cpp`` is the int8 inference engine (``mobilenets.deployment.int8_engine``): the whole
network per image with AVX-512 VNNI. It is a separate library, built only when the engine is first
used, so that its build can never disable the training kernels.

``prepare_for_training`` applies them (``fuse_for_training``) when the C++ builds; the parameters,
buffers, ``state_dict`` and module tree are unchanged, and any case the kernels do not cover (eval
mode, frozen BatchNorm, other devices, other activations or kernel sizes) runs the module's own
forward. Results equal PyTorch's to fp32 rounding and do not depend on the thread count
(tests/test_kernels.py). The extension is compiled once per machine with the local C++ compiler
(~30 s) and cached under ``$MOBILENETS_HOME/kernels``; without a compiler, or with
``MOBILENETS_FUSED_KERNELS=0``, everything runs in PyTorch's kernels.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

TRAINING_SOURCE = Path(__file__).with_name("conv_bn_act.cpp")
INT8_SOURCE = Path(__file__).with_name("int8_inference.cpp")
SOURCES = (TRAINING_SOURCE, INT8_SOURCE)
ACTIVATION_CODES: dict[type[nn.Module], int] = {nn.Identity: 0, nn.ReLU: 1, nn.ReLU6: 2, nn.Hardswish: 3}

_lock = threading.Lock()
_loaded: bool | None = None
_int8_loaded: bool | None = None


def _cpu_fingerprint() -> str:
    """The build uses -march=native: a cached binary is only reused on a CPU with the same features."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return hashlib.sha256(f"{platform.machine()} {flags}".encode()).hexdigest()[:12]


def build_directory(source: Path = TRAINING_SOURCE) -> Path:
    """``$MOBILENETS_HOME/kernels/<torch>-<cpu>-<source>``: a new torch, CPU or source builds anew.

    Built on the machine that runs them (``-march=native``), cached there, never shipped.
    """
    from mobilenets.core.files import cache_dir

    source_hash = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    torch_version = torch.__version__.replace("+", "_")
    return cache_dir().parent / "kernels" / f"torch{torch_version}-{_cpu_fingerprint()}-{source_hash}"


def available() -> bool:
    """True when the fused kernels are built and loaded (``MOBILENETS_FUSED_KERNELS=0`` turns them off).

    The first call on a machine compiles the C++ source (~30 s); later calls load the cached library.
    A missing compiler or a failed build gives a warning once and False: training then runs in PyTorch.
    """
    from mobilenets.core.settings import env_flag  # acceleration imports this module

    global _loaded
    if env_flag("MOBILENETS_FUSED_KERNELS") is False:
        return False
    with _lock:
        if _loaded is None:
            _loaded = _load(
                name="mobilenets_kernels",
                source=TRAINING_SOURCE,
                marker="depthwise_forward",
                what="the fused CPU training kernels",
                fallback="training runs in PyTorch's kernels (slower)",
            )
    return _loaded


def int8_available() -> bool:
    """True when the int8 inference engine's library is built and loaded (its own build, ~35 s once)."""
    global _int8_loaded
    with _lock:
        if _int8_loaded is None:
            _int8_loaded = _load(
                name="mobilenets_int8_engine",
                source=INT8_SOURCE,
                marker="int8_forward",
                what="the int8 inference engine",
                fallback="use ONNX Runtime's int8 model instead (--engine onnxruntime)",
            )
    return _int8_loaded


def _load(*, name: str, source: Path, marker: str, what: str, fallback: str) -> bool:
    if platform.system() != "Linux" and platform.system() != "Darwin":
        return False
    try:
        from torch.utils import cpp_extension

        from mobilenets.core.files import atomic_write_bytes

        _put_ninja_on_path()
        directory = build_directory(source)
        directory.mkdir(parents=True, exist_ok=True)
        with build_lock(directory, what=what):
            # Compiled from a copy inside the build directory: the build file then names the same path
            # whichever checkout or installation loads it, so a second one does not rebuild (the
            # directory's name already pins the source's content).
            staged, code = directory / source.name, source.read_bytes()
            if not staged.exists() or staged.read_bytes() != code:
                atomic_write_bytes(staged, code)
            if not (directory / f"{name}.so").exists():
                print(
                    f"mobilenets: compiling {what}, once per machine (~30 s) into {directory}",
                    file=sys.stderr,
                    flush=True,
                )
            for attempt in range(2):
                try:
                    cpp_extension.load(
                        name=name,
                        sources=[str(staged)],
                        extra_cflags=["-O3", "-march=native", "-fopenmp", "-ffast-math", "-fno-finite-math-only"],
                        extra_ldflags=["-fopenmp"],
                        build_directory=str(directory),
                        is_python_module=False,
                        verbose=False,
                    )
                    break
                except FileNotFoundError as error:
                    # An older mobilenets, which builds without the flock, removed torch's lock file under
                    # this build when its own build ended: the build itself is done; loading again loads it.
                    if attempt or Path(error.filename or "").name != TORCH_BATON:
                        raise
        return hasattr(torch.ops.mobilenets_kernels, marker)
    except Exception as error:  # no compiler, no ninja, a read-only cache: PyTorch's kernels still work
        from mobilenets.core.files import cache_dir

        warnings.warn(
            f"mobilenets: {what} unavailable ({type(error).__name__}: {error}); {fallback}. It needs a C++ "
            f"compiler, `ninja` and a writable cache folder (set MOBILENETS_HOME; now {cache_dir().parent / 'kernels'}).",
            stacklevel=3,
        )
        return False


TORCH_BATON = "lock"  # torch.utils.cpp_extension's lock file: it exists while a build runs


@contextlib.contextmanager
def build_lock(directory: Path, *, what: str) -> Iterator[None]:
    """Hold the build directory for this process; a process that waits says so.

    torch's own lock is a file that exists while a build runs (``FileBaton``): a build killed midway
    (Ctrl-C during the first ~30 s compile) leaves it behind, and every later load then waits for it
    forever. This lock is an ``flock``, which the operating system releases when its holder dies; every
    mobilenets build holds it, so a baton found while holding it was left by a dead build and is removed.
    """
    import fcntl

    with open(directory / "build.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"mobilenets: waiting for another process building {what} in {directory}", file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            (directory / TORCH_BATON).unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _put_ninja_on_path() -> None:
    """torch's extension builder runs ``ninja`` from PATH; the pip package's copy is not on PATH unless
    the virtual environment is activated."""
    try:
        import ninja
    except ImportError:
        return
    directory = str(getattr(ninja, "BIN_DIR", ""))
    if directory and directory not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([directory, os.environ.get("PATH", "")])


def _update_running_statistics(bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
    """What ``nn.BatchNorm2d`` does in training mode: running averages with the unbiased variance."""
    if not bn.track_running_stats or bn.running_mean is None:
        return
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        bn.running_mean.lerp_(mean, momentum)
        bn.running_var.lerp_(var * (count / max(count - 1, 1)), momentum)


class DepthwiseConvBNActFunction(torch.autograd.Function):
    """z = act(BN_batch(depthwise_conv(x))); returns z and the batch mean and (biased) variance."""

    @staticmethod
    def forward(ctx, x, weight, gamma, beta, stride: int, padding: int, eps: float, act: int, out_dtype):
        y, mean, var, invstd = torch.ops.mobilenets_kernels.depthwise_forward(x, weight, stride, padding, eps)
        z = torch.ops.mobilenets_kernels.bn_act_forward(y, mean, invstd, gamma, beta, act, out_dtype)
        ctx.save_for_backward(x, weight, y, mean, invstd, gamma, beta)
        ctx.config = (stride, padding, act)
        ctx.mark_non_differentiable(mean, var)
        return z, mean, var

    @staticmethod
    def backward(ctx, dz, _mean_grad, _var_grad):
        x, weight, y, mean, invstd, gamma, beta = ctx.saved_tensors
        stride, padding, act = ctx.config
        dx, dweight, dgamma, dbeta = torch.ops.mobilenets_kernels.depthwise_bn_act_backward(
            dz, x, weight, y, mean, invstd, gamma, beta, act, stride, padding, ctx.needs_input_grad[0]
        )
        # The kernel writes the weight gradient contiguous; a channels_last [C, 1, k, k] weight has the same
        # memory under other strides, and autograd's layout contract (which DistributedDataParallel checks,
        # warning at every run) wants the parameter's own strides.
        if dweight.stride() != weight.stride():
            dweight = torch.empty_like(weight).copy_(dweight)
        return (dx if ctx.needs_input_grad[0] else None), dweight, dgamma, dbeta, None, None, None, None, None


class BNActFunction(torch.autograd.Function):
    """z = act(BN_batch(y)) for a y some other op produced; returns z, batch mean and variance."""

    @staticmethod
    def forward(ctx, y, gamma, beta, eps: float, act: int):
        mean, var, invstd = torch.ops.mobilenets_kernels.batch_statistics(y, eps)
        z = torch.ops.mobilenets_kernels.bn_act_forward(y, mean, invstd, gamma, beta, act, y.dtype)
        ctx.save_for_backward(y, mean, invstd, gamma, beta)
        ctx.act = act
        ctx.mark_non_differentiable(mean, var)
        return z, mean, var

    @staticmethod
    def backward(ctx, dz, _mean_grad, _var_grad):
        y, mean, invstd, gamma, beta = ctx.saved_tensors
        dy, dgamma, dbeta = torch.ops.mobilenets_kernels.bn_act_backward(dz, y, mean, invstd, gamma, beta, ctx.act)
        return dy, dgamma, dbeta, None, None


class SqueezeExcitationFunction(torch.autograd.Function):
    """out = x · gate(mean_hw(x)) (MobileNetV3 §5.3) with the gate's small graph kept inside.

    PyTorch's backward of this expression writes three full-size tensors (the gate's product, the
    broadcast of the mean's gradient, and their sum); here the gate gradient is one reduction over
    (dout, x) and dx = dout · s + dmean / HW is one pass.
    """

    @staticmethod
    def forward(ctx, x, gate, *parameters):
        pooled = x.detach().mean((2, 3), keepdim=True, dtype=torch.float32).requires_grad_()
        # The gate's layers see one value per image and channel: in fp32 they cost nothing, where
        # autocast would cast their inputs, weights and gradients to and from bf16 at every step.
        with torch.enable_grad(), torch.autocast("cpu", enabled=False):
            scale = gate(pooled)
        ctx.save_for_backward(x)
        ctx.graph = (pooled, scale, parameters)
        return x * scale.detach().to(x.dtype)

    @staticmethod
    def backward(ctx, dout):
        (x,) = ctx.saved_tensors
        pooled, scale, parameters = ctx.graph
        n, c, h, w = x.shape
        dout = dout.contiguous(memory_format=torch.channels_last)  # once, not in each of the two kernels
        dscale = torch.ops.mobilenets_kernels.channel_dot(dout, x).view(n, c, 1, 1).to(scale.dtype)
        wanted = [pooled] + [p for p in parameters if p.requires_grad]
        grads = iter(torch.autograd.grad(scale, wanted, dscale))
        dpooled = next(grads)
        dx = torch.ops.mobilenets_kernels.scale_shift_channels(
            dout, scale.detach().view(n, c), (dpooled.float() / (h * w)).view(n, c)
        )
        dparameters = [next(grads) if p.requires_grad else None for p in parameters]
        return (dx, None, *dparameters)


def _squeeze_excitation_gate(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda pooled: module.gate(module.expand(module.act(module.reduce(pooled))))


def fused_squeeze_excitation(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``SqueezeExcitation`` in training mode through ``SqueezeExcitationFunction`` on a CPU."""
    if not (x.device.type == "cpu" and x.dim() == 4 and torch.is_grad_enabled()):
        return _eager_squeeze_excitation(module, x)
    return SqueezeExcitationFunction.apply(x, _squeeze_excitation_gate(module), *module.parameters())


def _eager_squeeze_excitation(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    scale = _squeeze_excitation_gate(module)(x.mean((2, 3), keepdim=True))
    return x * scale


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def fusible(module: nn.Module) -> bool:
    """A ConvBNAct (children conv, bn, act) whose parts the kernels implement."""
    conv, bn, act = (getattr(module, name, None) for name in ("conv", "bn", "act"))
    if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and type(act) in ACTIVATION_CODES):
        return False
    if conv.bias is not None or conv.dilation != (1, 1) or not bn.affine:
        return False
    if _is_depthwise(conv):
        square = conv.stride[0] == conv.stride[1] and conv.kernel_size[0] == conv.kernel_size[1]
        return square and conv.kernel_size[0] in (3, 5, 7) and conv.padding == (conv.kernel_size[0] // 2,) * 2
    return True


def fused_conv_bn_act(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A ConvBNAct in training mode through the fused kernels (PyTorch's ops where they do not apply)."""
    conv, bn, act = module.conv, module.bn, module.act
    # type(bn) is exact: a SyncBatchNorm swapped in later (DDP) must keep its synchronised statistics.
    supported = type(bn) is nn.BatchNorm2d and x.device.type == "cpu" and x.dim() == 4
    if not (bn.training and supported and x.dtype in (torch.float32, torch.bfloat16)):
        return act(bn(conv(x)))
    code = ACTIVATION_CODES[type(act)]
    if _is_depthwise(conv):
        out_dtype = torch.bfloat16 if torch.is_autocast_enabled("cpu") else torch.float32
        z, mean, var = DepthwiseConvBNActFunction.apply(
            x, conv.weight, bn.weight, bn.bias, conv.stride[0], conv.padding[0], bn.eps, code, out_dtype
        )
        count = z.shape[0] * z.shape[2] * z.shape[3]
    else:
        y = conv(x)
        z, mean, var = BNActFunction.apply(y, bn.weight, bn.bias, bn.eps, code)
        count = y.shape[0] * y.shape[2] * y.shape[3]
    _update_running_statistics(bn, mean, var, count)
    return z


def unfuse(model: nn.Module) -> nn.Module:
    """Every block back to PyTorch's own ops (in place; returns ``model``)."""
    for module in model.modules():
        if getattr(module, "training_kernel", None) is not None:
            module.training_kernel = None
    return model


def fuse_for_training(model: nn.Module) -> int:
    """Route every fusible ConvBNAct of ``model`` through the fused kernels (in place). Returns how many.

    Nothing happens (0) when the kernels are unavailable. The module tree, parameters and buffers are
    unchanged: the routing is each block's ``training_kernel`` (``unfuse`` sets it back to ``None``).
    """
    if not available():
        return 0
    from mobilenets.models.layers import SqueezeExcitation

    count = 0
    for module in model.modules():
        if fusible(module):
            module.training_kernel = fused_conv_bn_act
            count += 1
        elif type(module) is SqueezeExcitation:
            module.training_kernel = fused_squeeze_excitation
            count += 1
    return count
