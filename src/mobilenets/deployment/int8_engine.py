"""mobilenets' own int8 inference engine for the CPU: the whole network per image, in the L2 cache.

ONNX Runtime's int8 MobileNetV3-Small is no faster than its fp32 model on a 2-core CPU (BENCHMARKS.md,
issue 7): it runs layer by layer over the batch, so every uint8 activation tensor leaves the caches,
and its int8 stem, SE multiplies and layout transposes eat what the int8 1×1 convolutions save. This
engine (``kernels/int8_inference.cpp``) runs each image through all layers on one core, with each
layer's bias, activation, residual add and requantization fused into the pass that computes it.

What is int8 and what is not, on purpose:

- **int8**: every convolution (the stem, on the image quantized on the way in; depthwise; 1×1) and the
  classifier head's linear layers: uint8 activations (affine, one scale and zero point per tensor,
  min-max calibrated), int8 weights (symmetric, one scale per output channel), integer products
  summed exactly in int32. The tensors between layers are uint8; the logits are float.
- **int8 weights, fp32 arithmetic**: squeeze-and-excitation's two small FC layers (one value per image
  and channel: the pooled mean, the gate), and the global average pool, taken from the last conv's
  float outputs (never requantized).

The program is built from a trained model (BatchNorm folded into the convolutions) and calibration
images; ``reference_forward`` computes the same arithmetic in PyTorch (float64), which the tests
hold the C++ to. The engine needs the compiled kernels (``mobilenets.kernels.int8_available()``); AVX-512
VNNI makes it fast, and without it a portable scalar path gives the same results, slowly.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mobilenets.core.errors import MobilenetsError
from mobilenets.kernels import ACTIVATION_CODES  # the codes both C++ files read
from mobilenets.models.layers import ConvBNAct, DepthwiseSeparable, InvertedResidual, SqueezeExcitation

STEM, POINTWISE, DEPTHWISE, SQUEEZE_EXCITE = 0, 1, 2, 3
TENSORS_PER_OP = 6  # kernels/int8_inference.cpp: kTensorsPerOp


@dataclass
class Quantization:
    """Affine uint8: real = scale · (q − zero_point)."""

    scale: float
    zero_point: int

    @classmethod
    def from_range(cls, low: float, high: float) -> Quantization:
        low, high = min(low, 0.0), max(high, 0.0)  # zero must be exactly representable (padding, ReLU)
        scale = (high - low) / 255.0 or 1.0
        zero_point = int(min(max(round(-low / scale), 0), 255))
        return cls(float(torch.tensor(scale, dtype=torch.float32)), zero_point)


@dataclass
class Op:
    """One layer of the program; ``module`` is the float layer whose output it quantizes."""

    kind: int
    module: nn.Module
    in_channels: int
    out_channels: int
    kernel: int = 1
    stride: int = 1
    activation: int = 0
    residual: int = -1  # index of the op whose input is added to this op's output
    pool: bool = False
    hidden: int = 0
    output_point: nn.Module | None = None  # the module whose output is this op's output tensor
    input_quant: Quantization | None = None
    output_quant: Quantization | None = None
    residual_quant: Quantization | None = None
    tensors: list[torch.Tensor] = field(default_factory=list)
    # for reference_forward: integer weights as floats, per-channel scales, bias
    weight_int: torch.Tensor | None = None
    weight_scale: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    se_weights: tuple[torch.Tensor, ...] | None = None  # squeeze-and-excitation: int8 weights, row scales


def _activation_code(module: nn.Module) -> int:
    if type(module) not in ACTIVATION_CODES:
        raise MobilenetsError(f"the int8 engine has no kernel for activation {type(module).__name__}")
    return ACTIVATION_CODES[type(module)]


def _conv_op(kind: int, block: ConvBNAct, **extra) -> Op:
    conv = block.conv
    return Op(
        kind,
        block,
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size[0],
        conv.stride[0],
        _activation_code(block.act),
        output_point=block,
        **extra,
    )


def plan(model: nn.Module) -> list[Op]:
    """The ops of a BN-folded MobileNet (``models.fusion.fold_batchnorm``), in order: every family's blocks."""
    ops = [_conv_op(STEM, model.stem)]
    for block in model.blocks:
        if isinstance(block, InvertedResidual):
            start = len(ops)
            if isinstance(block.expand, ConvBNAct):
                ops.append(_conv_op(POINTWISE, block.expand))
            ops.append(_conv_op(DEPTHWISE, block.depthwise))
            if isinstance(block.squeeze_excite, SqueezeExcitation):
                se = block.squeeze_excite
                if type(se.act) is not nn.ReLU or type(se.gate) is not nn.Hardsigmoid:
                    raise MobilenetsError("the int8 engine's squeeze-and-excitation is ReLU then hard-sigmoid")
                channels = block.depthwise.conv.out_channels
                ops.append(Op(SQUEEZE_EXCITE, se, channels, channels, hidden=se.reduce.out_channels, output_point=se))
            ops.append(_conv_op(POINTWISE, block.project, residual=start if block.use_residual else -1))
            ops[-1].output_point = block  # the block's output includes the residual add
        elif isinstance(block, DepthwiseSeparable):
            ops.append(_conv_op(DEPTHWISE, block.depthwise))
            ops.append(_conv_op(POINTWISE, block.pointwise))
        elif isinstance(block, ConvBNAct) and block.conv.kernel_size == (1, 1) and block.conv.groups == 1:
            ops.append(_conv_op(POINTWISE, block))
        else:
            raise MobilenetsError(f"the int8 engine has no kernel for a {type(block).__name__} block")
    if isinstance(model.last_conv, ConvBNAct):
        ops.append(_conv_op(POINTWISE, model.last_conv))
    last = ops[-1]
    if last.kind != POINTWISE or last.residual >= 0:
        raise MobilenetsError("the int8 engine needs a network that ends in a 1x1 convolution without a residual")
    last.pool = True  # its float outputs are averaged into the features, never requantized
    for op in ops:
        if op.kind in (STEM, DEPTHWISE) and op.kernel % 2 == 0:
            raise MobilenetsError("the int8 engine needs odd kernel sizes")
        if op.kind == STEM and op.in_channels > 4:
            raise MobilenetsError("the int8 engine reads images of up to 4 channels")
        if op.kind == DEPTHWISE and op.kernel not in (3, 5, 7):
            raise MobilenetsError("the int8 engine's depthwise kernels are 3×3, 5×5 or 7×7")
        if op.kind == POINTWISE and op.in_channels % 4:
            raise MobilenetsError("the int8 engine needs 1×1 input widths that are multiples of 4")
    return ops


@torch.no_grad()
def measure_ranges(model: nn.Module, ops: list[Op], head: list[HeadLayer], batches: Iterable[torch.Tensor]) -> dict:
    """Min and max of every tensor the engine stores as uint8, over the calibration images:
    ``image``; ``ops``, each op's output (None for the last, whose outputs are pooled in float);
    ``head``, the pooled features, then each head layer's activated output but the last (float logits)."""
    ranges: dict[int, list[float]] = {}
    points = {id(op.output_point): op.output_point for op in ops if not op.pool}
    points.update({id(layer.activation): layer.activation for layer in head[:-1]})

    def record(module, _inputs, output):
        low, high = float(output.min()), float(output.max())
        seen = ranges.setdefault(id(module), [low, high])
        seen[0], seen[1] = min(seen[0], low), max(seen[1], high)

    handles = [module.register_forward_hook(record) for module in points.values()]
    stem = ops[0].module
    handles.append(stem.register_forward_pre_hook(lambda module, inputs: record(module.conv, None, inputs[0])))
    if head:
        first = head[0].linear
        handles.append(first.register_forward_pre_hook(lambda module, inputs: record(module, None, inputs[0])))
    try:
        count = 0
        for images in batches:
            model(torch.as_tensor(images).float())
            count += 1
        if not count:
            raise MobilenetsError("the int8 engine needs at least one calibration image")
    finally:
        for handle in handles:
            handle.remove()
    return {
        "image": ranges[id(stem.conv)],
        "ops": [None if op.pool else ranges[id(op.output_point)] for op in ops],
        "head": ([ranges[id(head[0].linear)]] + [ranges[id(layer.activation)] for layer in head[:-1]]) if head else [],
    }


def apply_ranges(ops: list[Op], head: list[HeadLayer], ranges: dict) -> None:
    """Each op's input, output and residual quantization from the calibrated ranges."""
    try:
        image, op_ranges, head_ranges = ranges["image"], ranges["ops"], ranges["head"]
    except (KeyError, TypeError):
        raise MobilenetsError("int8 engine calibration: not a dict of image, ops and head ranges") from None
    if len(op_ranges) != len(ops) or len(head_ranges) != len(head):
        raise MobilenetsError(
            f"int8 engine calibration has {len(op_ranges)} + {len(head_ranges)} ranges for a network of "
            f"{len(ops)} ops and {len(head)} head layers"
        )
    for layer, found in zip(head, head_ranges, strict=True):
        layer.input_quant = Quantization.from_range(*found)
    for layer, following in itertools.pairwise(head):
        layer.output_quant = following.input_quant
    previous = Quantization.from_range(*image)
    for op, found in zip(ops, op_ranges, strict=True):
        op.input_quant = previous
        if not op.pool:
            op.output_quant = Quantization.from_range(*found)
            previous = op.output_quant
    for op in ops:
        if op.residual >= 0:
            op.residual_quant = ops[op.residual].input_quant


def _padded(values: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
    out = torch.zeros(length, dtype=dtype)
    out[: values.numel()] = values.to(dtype)
    return out


def _per_channel_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel (what ORT's QDQ quantizer does for MobileNets)."""
    flat = weight.reshape(weight.shape[0], -1).double()
    scale = (flat.abs().amax(1) / 127.0).float().double()
    scale[scale == 0] = 1.0
    integers = torch.clamp(torch.round(flat / scale[:, None]), -127, 127)
    return integers.reshape(weight.shape), scale.float()


def _round16(channels: int) -> int:
    return (channels + 15) // 16 * 16


def pack(ops: list[Op]) -> None:
    """Each op's tensors in the layouts the C++ reads (see the structs in int8_inference.cpp)."""
    empty = torch.zeros(0)
    for op in ops:
        padded = _round16(op.out_channels)
        if op.kind == SQUEEZE_EXCITE:
            se = op.module
            reduce, reduce_scale = _per_channel_int8(se.reduce.weight.detach().reshape(op.hidden, op.in_channels))
            expand, expand_scale = _per_channel_int8(se.expand.weight.detach().reshape(op.in_channels, op.hidden))
            op.se_weights = (reduce, reduce_scale, expand, expand_scale)
            op.tensors = [
                reduce.to(torch.int8).contiguous(),
                se.reduce.bias.detach().float().contiguous(),
                expand.to(torch.int8).contiguous(),
                se.expand.bias.detach().float().contiguous(),
                reduce_scale.contiguous(),
                expand_scale.contiguous(),
            ]
            continue
        conv = op.module.conv
        weight = conv.weight.detach().float()
        bias = conv.bias.detach().float() if conv.bias is not None else torch.zeros(op.out_channels)
        op.bias = bias
        integers, scale = _per_channel_int8(weight)
        op.weight_int, op.weight_scale = integers.float(), scale
        in_zero = op.input_quant.zero_point
        multiplier = _padded(op.input_quant.scale * scale.double(), padded, torch.float32)
        if op.kind == DEPTHWISE:
            taps = op.kernel * op.kernel
            table = torch.zeros(taps, padded)
            table[:, : op.out_channels] = integers.reshape(op.out_channels, taps).t().float()
            sums = integers.reshape(op.out_channels, -1).sum(1)
            correction = _padded(in_zero * sums, padded, torch.float32)
            # [C/16][k rows][ceil(k/4) groups][16 lanes][4 columns], zeros past the kernel's width
            k, groups = op.kernel, (op.kernel + 3) // 4
            quads = torch.zeros(padded, k, groups * 4, dtype=torch.int8)
            quads[: op.out_channels, :, :k] = integers.reshape(op.out_channels, k, k).to(torch.int8)
            quads = quads.reshape(padded // 16, 16, k, groups, 4).permute(0, 2, 3, 1, 4).contiguous()
            op.tensors = [
                table.contiguous(),
                correction,
                multiplier,
                _padded(bias, padded, torch.float32),
                quads,
                _padded(in_zero * sums.to(torch.int64), padded, torch.int32),
            ]
        elif op.kind == STEM:
            # [Cout, Cin, k, k] → [Cout/16][k·k taps][16 lanes][4 channels], zeros past Cin
            taps = op.kernel * op.kernel
            table = torch.zeros(padded, taps, 4, dtype=torch.int8)
            table[: op.out_channels, :, : op.in_channels] = (
                integers.reshape(op.out_channels, op.in_channels, taps).permute(0, 2, 1).to(torch.int8)
            )
            packed = table.reshape(padded // 16, 16, taps, 4).permute(0, 2, 1, 3).contiguous()
            correction = _padded(
                in_zero * integers.reshape(op.out_channels, -1).sum(1).to(torch.int64), padded, torch.int32
            )
            op.tensors = [packed, correction, multiplier, _padded(bias, padded, torch.float32), empty, empty]
        else:
            op.tensors = [*_pack_pointwise(integers, scale, bias, op.input_quant), empty, empty]


def _pack_pointwise(
    integers: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, input_quant: Quantization
) -> list[torch.Tensor]:
    """A 1×1 convolution's (or a linear layer's) int8 weights [M, K] as ``PointwiseArgs`` reads them:
    packed [M/16][K/4][16 lanes][4 bytes], zero-point correction, multiplier, bias (padded to 16)."""
    outputs, inputs = integers.shape[0], integers[0].numel()
    padded = _round16(outputs)
    table = torch.zeros(padded, inputs, dtype=torch.int8)
    table[:outputs] = integers.reshape(outputs, inputs).to(torch.int8)
    packed = table.reshape(padded // 16, 16, inputs // 4, 4).permute(0, 2, 1, 3).contiguous()
    sums = integers.reshape(outputs, inputs).sum(1).to(torch.int64)
    return [
        packed,
        _padded(input_quant.zero_point * sums, padded, torch.int32),
        _padded(input_quant.scale * scale.double(), padded, torch.float32),
        _padded(bias, padded, torch.float32),
    ]


@dataclass
class HeadLayer:
    """A fully connected layer of the classifier head, run over the batch (``int8_linear``)."""

    linear: nn.Linear
    activation: nn.Module
    input_quant: Quantization | None = None
    output_quant: Quantization | None = None  # None: the last layer, whose output stays float
    tensors: list[torch.Tensor] = field(default_factory=list)
    weight_int: torch.Tensor | None = None
    weight_scale: torch.Tensor | None = None


def plan_head(model: nn.Module) -> list[HeadLayer]:
    """The head's linear layers after the pool: V3's hidden layer (with its activation), the classifier."""
    layers = []
    if isinstance(model.head_hidden, nn.Linear):
        layers.append(HeadLayer(model.head_hidden, model.head_activation))
    if isinstance(model.classifier, nn.Linear):
        layers.append(HeadLayer(model.classifier, nn.Identity()))
    for layer in layers:
        _activation_code(layer.activation)
        if layer.linear.in_features % 4:
            raise MobilenetsError("the int8 engine needs head widths that are multiples of 4")
    return layers


def pack_head(layers: list[HeadLayer]) -> None:
    for layer in layers:
        weight = layer.linear.weight.detach().float()
        bias = layer.linear.bias.detach().float() if layer.linear.bias is not None else torch.zeros(weight.shape[0])
        layer.weight_int, layer.weight_scale = _per_channel_int8(weight)
        layer.tensors = _pack_pointwise(layer.weight_int, layer.weight_scale, bias, layer.input_quant)


def _tables(ops: list[Op]) -> tuple[torch.Tensor, torch.Tensor]:
    ints, floats = [], []
    for op in ops:
        ints.append(
            [
                op.kind,
                op.in_channels,
                op.out_channels,
                op.kernel,
                op.stride,
                op.activation,
                op.residual,
                int(op.pool),
                op.hidden,
            ]
        )
        quants = [op.input_quant, op.output_quant, op.residual_quant]
        row = []
        for quant in quants:
            row += [quant.scale, float(quant.zero_point)] if quant else [1.0, 0.0]
        floats.append(row)
    return torch.tensor(ints, dtype=torch.int64), torch.tensor(floats, dtype=torch.float32)


class Int8Engine:
    """Normalized NCHW float batch in, logits out: the program in C++, the classifier head in PyTorch."""

    name = "int8"
    path = None

    def __init__(
        self,
        model: nn.Module,
        calibration: Iterable[torch.Tensor] | None = None,
        ranges: dict | None = None,
    ) -> None:
        """``calibration``: batches of normalized images to measure the ranges on, or ``ranges`` measured before."""
        from mobilenets import kernels
        from mobilenets.models.fusion import fold_batchnorm

        if not kernels.int8_available():
            raise MobilenetsError(
                "the int8 engine needs the compiled CPU kernels (a C++ compiler and ninja; see mobilenets.kernels)"
            )
        self.model = fold_batchnorm(model).float().eval()
        self.num_classes = model.num_classes
        self.ops = plan(self.model)
        self.head = plan_head(self.model)
        if ranges is None:
            if calibration is None:
                raise MobilenetsError("the int8 engine needs calibration images or the ranges measured on them")
            ranges = measure_ranges(self.model, self.ops, self.head, calibration)
        self.ranges = ranges
        apply_ranges(self.ops, self.head, ranges)
        pack(self.ops)
        pack_head(self.head)
        self.ints, self.floats = _tables(self.ops)
        self.tensors = [tensor for op in self.ops for tensor in op.tensors]
        self.vnni = bool(torch.ops.mobilenets_kernels.int8_vnni())

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return torch.ops.mobilenets_kernels.int8_forward(
            images.float().contiguous(), self.ints, self.floats, self.tensors
        )

    def head_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The head's linear layers in int8 over the batch: uint8 between them, float logits out."""
        if not self.head:
            return x
        for layer in self.head:
            last = layer.output_quant is None
            out = layer.output_quant or Quantization(1.0, 0)
            x = torch.ops.mobilenets_kernels.int8_linear(
                x,
                *layer.tensors,
                layer.input_quant.scale,
                float(layer.input_quant.zero_point),
                _activation_code(layer.activation),
                out.scale,
                float(out.zero_point),
                layer.linear.out_features,
                last,
            )
        return x

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.head_forward(self.features(images))

    def weight_bytes(self) -> int:
        """Bytes of the weights the engine holds (int8 convolutions and head, fp32 squeeze-and-excitation)."""
        return sum(
            t.numel() * t.element_size() for t in self.tensors + [t for layer in self.head for t in layer.tensors]
        )


# --------------------------------------------------------------------------------------------------
# The same arithmetic in PyTorch (float64), for the tests
# --------------------------------------------------------------------------------------------------


def _activate(x: torch.Tensor, code: int) -> torch.Tensor:
    if code == 1:
        return x.clamp_min(0)
    if code == 2:
        return x.clamp(0, 6)
    if code == 3:
        return x * (x + 3).clamp(0, 6) / 6
    return x


def _quantize(x: torch.Tensor, quant: Quantization) -> torch.Tensor:
    """As the C++ rounds: x·(1/s) + z in one fp32 rounding (a fused multiply-add), then to nearest even."""
    inverse = float(torch.tensor(1.0, dtype=torch.float32) / torch.tensor(quant.scale, dtype=torch.float32))
    fused = (x.float().double() * inverse + quant.zero_point).float().double()
    return torch.round(fused).clamp(0, 255)


@torch.no_grad()
def reference_forward(engine: Int8Engine, images: torch.Tensor, ops: int | None = None) -> torch.Tensor:
    """What ``engine.features`` computes (or, with ``ops``, the uint8 output of the first ``ops`` ops), in float64."""
    program = engine.ops[: ops or len(engine.ops)]
    x = images.double()
    inputs: list[torch.Tensor] = []
    for op in program:
        inputs.append(x)
        pad = (op.kernel - 1) // 2
        if op.kind == SQUEEZE_EXCITE:
            se = op.module
            q_in = op.input_quant
            reduce, reduce_scale, expand, expand_scale = (t.double() for t in op.se_weights)
            mean = (x.mean((2, 3)) - q_in.zero_point) * q_in.scale
            hidden = F.relu(mean @ reduce.t() * reduce_scale + se.reduce.bias.double())
            gate = ((hidden @ expand.t() * expand_scale + se.expand.bias.double() + 3).clamp(0, 6) / 6)[
                :, :, None, None
            ]
            x = _quantize((x - q_in.zero_point) * gate * q_in.scale, op.output_quant)
            continue
        if op.kind == STEM:
            x = _quantize(x, op.input_quant)  # the image, quantized on the way in
        q_in = op.input_quant
        groups = op.in_channels if op.kind == DEPTHWISE else 1
        sums = F.conv2d(x - q_in.zero_point, op.weight_int.double(), None, op.stride, pad, groups=groups)
        y = sums * (q_in.scale * op.weight_scale.double())[None, :, None, None] + op.bias.double()[None, :, None, None]
        if op.residual >= 0:
            q_res = op.residual_quant
            y = y + (inputs[op.residual] - q_res.zero_point) * q_res.scale
        y = _activate(y, op.activation)
        x = y.mean((2, 3)) if op.pool else _quantize(y, op.output_quant)
    return x


@torch.no_grad()
def reference_head(engine: Int8Engine, features: torch.Tensor) -> torch.Tensor:
    """What ``engine.head_forward`` computes, in float64."""
    if not engine.head:
        return features
    x = _quantize(features.double(), engine.head[0].input_quant)
    for layer in engine.head:
        q_in = layer.input_quant
        bias = layer.linear.bias.double() if layer.linear.bias is not None else 0.0
        y = (x - q_in.zero_point) @ layer.weight_int.double().t() * (q_in.scale * layer.weight_scale.double()) + bias
        y = _activate(y, _activation_code(layer.activation))
        x = y if layer.output_quant is None else _quantize(y, layer.output_quant)
    return x


# --------------------------------------------------------------------------------------------------
# A run's engine: calibrated once by `mobilenets quantize`, kept next to the weights
# --------------------------------------------------------------------------------------------------

CALIBRATION_FILE = "int8_engine.json"


def batches_of(images, size: int = 32) -> list[torch.Tensor]:
    images = torch.as_tensor(images)
    return [images[start : start + size] for start in range(0, len(images), size)]


def save_calibration(engine: Int8Engine, model: nn.Module, run_dir: Path | str) -> Path:
    """``RUN_DIR/int8_engine.json``: the measured ranges, tied to these exact weights by their fingerprint."""
    from mobilenets.core.files import atomic_write_text
    from mobilenets.models.weights import weights_fingerprint

    path = Path(run_dir) / CALIBRATION_FILE
    record = {"format": 1, "weights_sha256": weights_fingerprint(model), "ranges": engine.ranges}
    atomic_write_text(path, json.dumps(record))
    return path


def load_for_run(model: nn.Module, run_dir: Path | str) -> Int8Engine:
    """The int8 engine of a quantized run (``mobilenets quantize`` calibrates it)."""
    from mobilenets.models.weights import weights_fingerprint

    path = Path(run_dir) / CALIBRATION_FILE
    fix = f"run `mobilenets quantize {run_dir}` to calibrate it"
    if not path.is_file():
        raise MobilenetsError(f"{path}: not found; the int8 engine needs calibrated ranges: {fix}")
    try:
        record = json.loads(path.read_text())
        ranges = record["ranges"]
        fingerprint = record["weights_sha256"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise MobilenetsError(f"{path}: unreadable ({type(error).__name__}: {error}); {fix}") from None
    if fingerprint != weights_fingerprint(model):
        raise MobilenetsError(f"{path}: calibrated for other weights than {Path(run_dir) / 'model.safetensors'}; {fix}")
    return Int8Engine(model, ranges=ranges)


def check_engine(
    model: nn.Module,
    calibration: np.ndarray,
    evaluation: np.ndarray,
    labels: np.ndarray | None,
    fp32_onnx: Path | str,
    batches: Sequence[int] = (1, 32),
    report=print,
    threshold: float = 1.0,
) -> tuple[Int8Engine, dict]:
    """Calibrate the int8 engine, compare it with fp32 ONNX Runtime (accuracy, agreement, speed), report.

    A loss of more than ``threshold`` top-1 points is said plainly, with what to use instead."""
    from mobilenets.deployment.onnx_runtime import create_session, onnx_logits
    from mobilenets.deployment.timing import compare_speed

    engine = Int8Engine(model, batches_of(calibration))
    fp32 = onnx_logits(fp32_onnx, evaluation).argmax(1)
    int8 = np.concatenate([engine(batch).numpy() for batch in batches_of(evaluation, 64)]).argmax(1)
    figures: dict = {"int8_engine_agreement": float((fp32 == int8).mean()), "int8_engine_vnni": engine.vnni}
    if labels is not None:
        figures["int8_engine_val_accuracy"] = float((int8 == labels).mean())
        figures["int8_engine_fp32_val_accuracy"] = float((fp32 == labels).mean())
    session = create_session(fp32_onnx)
    name = session.get_inputs()[0].name
    checks = []
    for batch_size in batches:
        images = np.ascontiguousarray(np.resize(evaluation, (batch_size, *evaluation.shape[1:])))
        tensor = torch.from_numpy(images)
        check = compare_speed(
            batch_size, lambda images=images: session.run(None, {name: images}), lambda tensor=tensor: engine(tensor)
        )
        checks.append(check)
        figures[f"int8_engine_speedup_batch{batch_size}"] = round(check.speedup, 3)
    accuracy = (
        f"top-1 {100 * figures['int8_engine_val_accuracy']:.2f}% (fp32 {100 * figures['int8_engine_fp32_val_accuracy']:.2f}%), "
        if labels is not None
        else ""
    )
    speed = ", ".join(check.describe() for check in checks)
    kind = "AVX-512 VNNI" if engine.vnni else "portable C++, no AVX-512 VNNI: slow"
    report(
        f"int8 engine ({kind}): {accuracy}agreement with fp32 {100 * figures['int8_engine_agreement']:.2f}% "
        f"on {len(evaluation)} images; against fp32 ONNX Runtime {speed}"
    )
    if labels is not None:
        drop = 100 * (figures["int8_engine_fp32_val_accuracy"] - figures["int8_engine_val_accuracy"])
        figures["int8_engine_within_threshold"] = drop <= threshold + 1e-9
        if drop > threshold + 1e-9:
            report(
                f"WARNING: the int8 engine loses {drop:.2f} points of top-1 on these {len(evaluation)} images "
                f"(threshold {threshold:g}; one image is {100 / len(evaluation):.2f} points here); for this run "
                "prefer the ONNX int8 model (--engine onnxruntime), or quantize again with more calibration "
                "images (--calibration N)"
            )
    return engine, figures
