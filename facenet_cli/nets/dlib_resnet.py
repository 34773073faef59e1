"""dlib's face-recognition ResNet (`dlib_face_recognition_resnet_model_v1.dat`) in PyTorch.

The `.dat` file is read here in pure Python. Facts about the format (from dlib's
serialize.h, dnn/tensor.h, dnn/core.h, dnn/layers.h, dnn/input.h):

* integers: a control byte (bit 7 = negative, low 4 bits = byte count), then the magnitude
  as that many little-endian bytes; 0 is written as one zero byte;
* scalar floats: an int64 mantissa then an int16 exponent (value = mantissa * 2**exponent),
  exponents 32000/32001/32002 meaning +inf/-inf/nan; bools: one ASCII '0'/'1';
  strings: a length then the bytes;
* tensors: version 2, four dimensions (n, k, rows, cols), then raw little-endian float32;
  alias tensors (views into a layer's parameter tensor): version 1 and four dimensions;
* the network: the loss layer's version and details, then one version number per layer from
  the output inward (2 for an ordinary layer, 3 for the one on top of the input layer, 1 for
  tag and skip layers, which store nothing else), the input layer, then the details of every
  ordinary layer from the input outward, each followed by three flags and three (empty)
  training tensors (and, for the layer on the input, its sample expansion factor).

The file does not say which tag an add_prev layer adds or where a skip jumps to; that is fixed
by `anet_type` in dlib's tools/python/src/face_recognition.cpp, which `_TOPOLOGY` mirrors.
Batch norm was already replaced by affine layers (scale and shift) when the file was saved;
we fold each into the convolution before it, and the input layer's (pixel - mean) / 256 into
the first convolution, so a forward pass is 29 convolutions, relus, pools, adds and one matmul.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError, UsageError

FLOAT_IS_INF, FLOAT_IS_NINF, FLOAT_IS_NAN = 32000, 32001, 32002
INPUT_SIZE = 150


# --- the byte-level readers ---------------------------------------------------------------------

class DlibStream:
    """A cursor over the bytes of a dlib-serialized file."""

    def __init__(self, data: bytes, name: str = "<bytes>"):
        self.data = memoryview(data)
        self.pos = 0
        self.name = name

    def _take(self, count: int) -> memoryview:
        if self.pos + count > len(self.data):
            raise DataError(f"{self.name} ends early at byte {self.pos}; the dlib model file is truncated.")
        chunk = self.data[self.pos:self.pos + count]
        self.pos += count
        return chunk

    def read_int(self) -> int:
        control = self._take(1)[0]
        size = control & 0x0F
        if size > 8 or control & 0x70:
            raise DataError(f"{self.name} has a bad integer control byte {control:#04x} at byte {self.pos - 1}.")
        value = int.from_bytes(bytes(self._take(size)), "little")
        return -value if control & 0x80 else value

    def read_float(self) -> float:
        mantissa = self.read_int()
        exponent = self.read_int()
        if exponent == FLOAT_IS_INF:
            return math.inf
        if exponent == FLOAT_IS_NINF:
            return -math.inf
        if exponent == FLOAT_IS_NAN:
            return math.nan
        return math.ldexp(mantissa, exponent)

    def read_bool(self) -> bool:
        flag = bytes(self._take(1))
        if flag not in (b"0", b"1"):
            raise DataError(f"{self.name} has a bad boolean {flag!r} at byte {self.pos - 1}.")
        return flag == b"1"

    def read_string(self) -> str:
        length = self.read_int()
        return bytes(self._take(length)).decode("latin-1")

    def read_tensor(self) -> np.ndarray:
        version = self.read_int()
        if version != 2:
            raise DataError(f"{self.name} holds a tensor of unknown version {version} at byte {self.pos}.")
        shape = tuple(self.read_int() for _ in range(4))
        count = int(np.prod(shape))
        values = np.frombuffer(self._take(4 * count), dtype="<f4").astype(np.float32)
        return values.reshape(shape)

    def read_alias_tensor(self) -> tuple[int, int, int, int]:
        version = self.read_int()
        if version != 1:
            raise DataError(f"{self.name} holds an alias tensor of unknown version {version} at byte {self.pos}.")
        return tuple(self.read_int() for _ in range(4))  # type: ignore[return-value]

    def at_end(self) -> bool:
        return self.pos == len(self.data)


# --- the layers as stored -----------------------------------------------------------------------

@dataclass
class DlibLayer:
    """One stored layer: its dlib type name (without version suffix) and what it holds."""

    kind: str  # "con", "affine", "relu", "max_pool", "avg_pool", "add_prev", "fc"
    params: dict = field(default_factory=dict)


@dataclass
class DlibNetFile:
    mean_rgb: tuple[float, float, float]
    input_size: tuple[int, int]
    layers: list[DlibLayer]  # from the input outward
    loss: str


def _read_con(stream: DlibStream, version: str) -> DlibLayer:
    if version != "con_4":
        raise DataError(f"{stream.name} uses convolution format {version!r}; only con_4 is supported.")
    params = stream.read_tensor().reshape(-1)
    num_filters, rows, cols = stream.read_int(), stream.read_int(), stream.read_int()
    stride = (stream.read_int(), stream.read_int())
    padding = (stream.read_int(), stream.read_int())
    filters_shape = stream.read_alias_tensor()
    biases_shape = stream.read_alias_tensor()
    for _ in range(4):  # learning-rate and weight-decay multipliers: training only
        stream.read_float()
    filters_size = int(np.prod(filters_shape))
    if filters_shape[0] != num_filters or filters_shape[2:] != (rows, cols) \
            or params.size != filters_size + int(np.prod(biases_shape)):
        raise DataError(f"{stream.name} has a convolution whose shapes disagree at byte {stream.pos}.")
    return DlibLayer("con", {
        "weight": params[:filters_size].reshape(filters_shape),  # (out, in, rows, cols), like torch
        "bias": params[filters_size:].copy(),
        "stride": stride,
        "padding": padding,
    })


def _read_affine(stream: DlibStream, version: str) -> DlibLayer:
    params = stream.read_tensor().reshape(-1)
    gamma_shape = stream.read_alias_tensor()
    stream.read_alias_tensor()  # beta: the same shape, stored right after gamma
    mode = stream.read_int()
    channels = int(np.prod(gamma_shape))
    if mode != 0 or params.size != 2 * channels:  # 0 = CONV_MODE: one scale and shift per channel
        raise DataError(f"{stream.name} has an affine layer in an unsupported mode at byte {stream.pos}.")
    return DlibLayer("affine", {"gamma": params[:channels].copy(), "beta": params[channels:].copy()})


def _read_pool(kind: str):
    def read(stream: DlibStream, version: str) -> DlibLayer:
        rows, cols = stream.read_int(), stream.read_int()
        stride = (stream.read_int(), stream.read_int())
        padding = (stream.read_int(), stream.read_int())
        # rows == cols == 0 is dlib's avg_pool_everything: one window over the whole map.
        return DlibLayer(kind, {"window": (rows, cols), "stride": stride, "padding": padding})
    return read


def _read_fc(stream: DlibStream, version: str) -> DlibLayer:
    num_outputs, num_inputs = stream.read_int(), stream.read_int()
    params = stream.read_tensor().reshape(-1)
    stream.read_alias_tensor()  # weights
    stream.read_alias_tensor()  # biases
    bias_mode = stream.read_int()
    for _ in range(4):
        stream.read_float()
    weight_size = num_inputs * num_outputs
    # Stored [in, out]; torch wants [out, in].
    weight = params[:weight_size].reshape(num_inputs, num_outputs).T.copy()
    bias = params[weight_size:weight_size + num_outputs].copy() if bias_mode == 0 else None
    return DlibLayer("fc", {"weight": weight, "bias": bias})


def _no_details(kind: str):
    return lambda stream, version: DlibLayer(kind)


_LAYER_READERS = {
    "con_": _read_con,
    "affine_": _read_affine,
    "relu_": _no_details("relu"),
    "add_prev_": _no_details("add_prev"),
    "max_pool_": _read_pool("max_pool"),
    "avg_pool_": _read_pool("avg_pool"),
    "fc_": _read_fc,
}


def _reader_for(stream: DlibStream, version: str):
    for prefix, reader in _LAYER_READERS.items():
        if version == prefix or (version.startswith(prefix) and version[len(prefix):].isdigit()):
            return reader
    raise DataError(f"{stream.name} holds a dlib layer {version!r} that this reader does not know.")


def read_dlib_net(path: str | Path) -> DlibNetFile:
    """Parse a dlib `loss_metric` network file into its input parameters and layer list."""
    path = Path(path)
    stream = DlibStream(path.read_bytes(), str(path))
    stream.read_int()  # add_loss_layer version
    loss = stream.read_string()
    if not loss.startswith("loss_metric"):
        raise DataError(f"{path} is a dlib {loss!r} network, not a face-recognition (loss_metric) one.")
    stream.read_float()  # margin
    stream.read_float()  # distance threshold
    ordinary_layers = 0
    while True:  # one version per layer, outermost first; 3 marks the layer on the input
        version = stream.read_int()
        if version == 2:
            ordinary_layers += 1
        elif version == 3:
            ordinary_layers += 1
            break
        elif version != 1:  # 1 = tag or skip layer, which stores nothing more
            raise DataError(f"{path} has an unexpected layer version {version} at byte {stream.pos}.")
    input_kind = stream.read_string()
    if input_kind != "input_rgb_image_sized":
        raise DataError(f"{path} uses input layer {input_kind!r}; only input_rgb_image_sized is supported.")
    mean_rgb = (stream.read_float(), stream.read_float(), stream.read_float())
    input_size = (stream.read_int(), stream.read_int())

    layers = []
    for index in range(ordinary_layers):
        version = stream.read_string()
        layers.append(_reader_for(stream, version)(stream, version))
        for _ in range(3):  # setup-called, gradient-stale, output-disabled flags
            stream.read_bool()
        for _ in range(3):  # x_grad, cached_output, params_grad: empty in a saved model
            stream.read_tensor()
        if index == 0:
            stream.read_int()  # the input-level layer's sample expansion factor
    if not stream.at_end():
        raise DataError(f"{path} has {len(stream.data) - stream.pos} unread bytes after the last layer.")
    return DlibNetFile(mean_rgb=mean_rgb, input_size=input_size, layers=layers, loss=loss)


# --- the topology -------------------------------------------------------------------------------

# anet_type, from the input outward: (block kind, output channels). "ares" is an identity
# residual block, "ares_down" a strided one whose shortcut is a 2x2/2 average pool.
_TOPOLOGY = (
    [("ares", 32)] * 3
    + [("ares_down", 64)] + [("ares", 64)] * 3
    + [("ares_down", 128)] + [("ares", 128)] * 2
    + [("ares_down", 256)] + [("ares", 256)] * 2
    + [("ares_down", 256)]
)


class _LayerQueue:
    """Hands out the stored layers in order, checking each is the kind the topology expects."""

    def __init__(self, layers: list[DlibLayer], name: str):
        self.layers = list(layers)
        self.index = 0
        self.name = name

    def take(self, kind: str) -> DlibLayer:
        if self.index >= len(self.layers):
            raise DataError(f"{self.name} has fewer layers than dlib's face-recognition ResNet.")
        layer = self.layers[self.index]
        if layer.kind != kind:
            raise DataError(
                f"{self.name} has a {layer.kind} layer where dlib's ResNet has a {kind} (layer {self.index})."
            )
        self.index += 1
        return layer


def _folded_conv(con: DlibLayer, affine: DlibLayer,
                 input_mean: tuple[float, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv weights and bias with the following affine (frozen batch norm) folded in, and the
    input normalisation too when `input_mean` is given; in float64, so folding adds no
    rounding beyond the final cast to float32."""
    gamma = affine.params["gamma"].astype(np.float64)
    beta = affine.params["beta"].astype(np.float64)
    weight = con.params["weight"].astype(np.float64) * gamma[:, None, None, None]
    bias = con.params["bias"].astype(np.float64) * gamma + beta
    if input_mean is not None:
        # conv((x - m) / 256) = conv(x) * (1/256) - sum(w * m) / 256, where no padding is involved.
        if tuple(con.params["padding"]) != (0, 0):
            raise DataError("The first convolution is padded, so the input normalisation cannot be folded into it.")
        weight = weight / 256.0
        bias = bias - np.einsum("oihw,i->o", weight, np.asarray(input_mean, dtype=np.float64))
    return torch.from_numpy(weight.astype(np.float32)), torch.from_numpy(bias.astype(np.float32))


class FoldedConv(nn.Module):
    """A dlib `con` followed by its `affine`, as one convolution with bias.

    With `input_mean` it also absorbs dlib's input layer, (pixel - mean) / 256 per channel:
    exact because that convolution has no padding (a padded border would be 0, not -mean/256).
    """

    def __init__(self, con: DlibLayer, affine: DlibLayer, input_mean: tuple[float, ...] | None = None):
        super().__init__()
        weight, bias = _folded_conv(con, affine, input_mean)
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False)
        self.stride = tuple(con.params["stride"])
        self.padding = tuple(con.params["padding"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)


def zero_padded_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: the sum over the larger extent of each dimension, the smaller operand
    zero-padded at the end (more channels; extra rows at the bottom, columns at the right)."""
    if a.shape == b.shape:
        return a + b
    shape = tuple(max(sa, sb) for sa, sb in zip(a.shape, b.shape))
    # A zeroed tensor in a's memory format, both operands added into their corners: unlike
    # F.pad this keeps channels_last.
    total = torch.zeros(shape, dtype=a.dtype, device=a.device)
    if a.is_contiguous(memory_format=torch.channels_last):
        total = total.contiguous(memory_format=torch.channels_last)
    for operand in (a, b):
        total[:operand.shape[0], :operand.shape[1], :operand.shape[2], :operand.shape[3]] += operand
    return total


def max_pool_unpadded(x: torch.Tensor, window: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """Max pooling without padding as two 1-D passes (columns, then rows) of elementwise maxima
    over strided views: the same numbers as F.max_pool2d, faster on channels_last CPU tensors."""
    for dim, size, step in ((3, window[1], stride[1]), (2, window[0], stride[0])):
        count = (x.shape[dim] - size) // step + 1
        views = [x.narrow(dim, offset, (count - 1) * step + 1)[(slice(None),) * dim + (slice(None, None, step),)]
                 for offset in range(size)]
        pooled = views[0]
        for view in views[1:]:
            pooled = torch.maximum(pooled, view)
        x = pooled
    return x


class ResidualBlock(nn.Module):
    """relu(block(x) + shortcut(x)); block = conv-affine-relu-conv-affine, the first conv
    strided when downsampling, in which case the shortcut is a 2x2/2 average pool."""

    def __init__(self, queue: _LayerQueue, downsample: bool):
        super().__init__()
        self.conv1 = FoldedConv(queue.take("con"), queue.take("affine"))
        queue.take("relu")
        self.conv2 = FoldedConv(queue.take("con"), queue.take("affine"))
        self.downsample = downsample
        if downsample:
            pool = queue.take("avg_pool")
            if pool.params["padding"] != (0, 0):
                raise DataError(f"{queue.name} has a padded shortcut pool, which dlib's ResNet does not.")
            self.pool_window = tuple(pool.params["window"])
            self.pool_stride = tuple(pool.params["stride"])
        queue.take("add_prev")
        queue.take("relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In-place relu and add on fresh conv outputs save a pass of memory traffic each; conv
        # backward needs no outputs, so autograd is unaffected.
        main = self.conv2(F.relu_(self.conv1(x)))
        if not self.downsample:
            return F.relu_(main.add_(x))
        shortcut = F.avg_pool2d(x, self.pool_window, self.pool_stride)
        # The main path (3x3/2, no padding) can be smaller than the shortcut (2x2/2) and has
        # more channels: dlib zero-pads, it does not crop.
        return F.relu_(zero_padded_add(main, shortcut))


class DlibResNet(nn.Module):
    """dlib's 29-conv face-recognition ResNet.

    forward: float (N, 3, 150, 150) RGB in 0..255 -> raw (unnormalised) (N, 128) descriptors,
    the numbers dlib's `compute_face_descriptor` returns. Runs in any memory format; fastest on
    CPU with model and input in channels_last.
    """

    def __init__(self, net: DlibNetFile, name: str = "dlib ResNet"):
        super().__init__()
        if net.input_size != (INPUT_SIZE, INPUT_SIZE):
            raise DataError(f"{name} expects {net.input_size} inputs, not dlib's {INPUT_SIZE}x{INPUT_SIZE}.")
        queue = _LayerQueue(net.layers, name)
        # dlib's input layer, (pixel - mean_rgb) / 256 on planar RGB, lives inside the stem conv.
        self.mean_rgb = tuple(net.mean_rgb)
        self.stem = FoldedConv(queue.take("con"), queue.take("affine"), input_mean=self.mean_rgb)
        queue.take("relu")
        stem_pool = queue.take("max_pool")
        if stem_pool.params["padding"] != (0, 0):
            raise DataError(f"{name} has a padded first max pool, which dlib's ResNet does not.")
        self.stem_pool_window = tuple(stem_pool.params["window"])
        self.stem_pool_stride = tuple(stem_pool.params["stride"])
        self.blocks = nn.ModuleList(ResidualBlock(queue, kind == "ares_down") for kind, _ in _TOPOLOGY)
        global_pool = queue.take("avg_pool")
        if global_pool.params["window"] != (0, 0):
            raise DataError(f"{name} lacks the global average pool before its embedding layer.")
        fc = queue.take("fc")
        if queue.index != len(queue.layers):
            raise DataError(f"{name} has more layers than dlib's face-recognition ResNet.")
        self.fc_weight = nn.Parameter(torch.from_numpy(fc.params["weight"]), requires_grad=False)
        self.fc_bias = (nn.Parameter(torch.from_numpy(fc.params["bias"]), requires_grad=False)
                        if fc.params["bias"] is not None else None)
        for block, (_, channels) in zip(self.blocks, _TOPOLOGY):
            if block.conv2.weight.shape[0] != channels:
                raise DataError(f"{name} has a block of {block.conv2.weight.shape[0]} channels where "
                                f"dlib's ResNet has {channels}.")

    @property
    def embedding_dim(self) -> int:
        return self.fc_weight.shape[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.stem(images))
        x = max_pool_unpadded(x, self.stem_pool_window, self.stem_pool_stride)
        for block in self.blocks:
            x = block(x)
        x = x.mean(dim=(2, 3))
        return F.linear(x, self.fc_weight, self.fc_bias)


def load_dlib_resnet(path: str | Path) -> DlibResNet:
    """Read a `dlib_face_recognition_resnet_model_v1.dat` file into an eval-mode module.

    Not cached in a converted form: reading and verifying such a cache (22 MB, SHA-256) measured
    as slow as this parse (0.12-0.27 s vs 0.15-0.24 s on a loaded 2-core machine), whose tensors
    are already read with np.frombuffer; the start-up that matters is torch's import, which
    `Embedder(engine="auto")` avoids for small jobs."""
    return DlibResNet(read_dlib_net(path), name=str(path)).eval()


def build_dlib_resnet(record, weights_path: str | Path | None) -> DlibResNet:
    """The `ARCHITECTURES` builder for "dlib-resnet"."""
    if weights_path is None:
        raise UsageError(f"Model {record.name!r} needs its .dat weights file; dlib's ResNet has no untrained form.")
    if not Path(weights_path).is_file():
        raise UsageError(f"The dlib model file {weights_path} does not exist; give an existing file.")
    return load_dlib_resnet(weights_path)


def conv_flops(model: DlibResNet, size: int = INPUT_SIZE) -> int:
    """Floating-point operations (2 per multiply-add) of one forward pass on one image, counting
    convolutions and the fully connected layer (pools, adds and relus are <1% and left out)."""
    flops = 0
    x = torch.zeros(1, 3, size, size)
    hooks = []

    def count(module, inputs, output):
        nonlocal flops
        out_channels, in_channels, rows, cols = module.weight.shape
        flops += 2 * output.shape[2] * output.shape[3] * out_channels * in_channels * rows * cols

    for module in model.modules():
        if isinstance(module, FoldedConv):
            hooks.append(module.register_forward_hook(count))
    with torch.inference_mode():
        model(x)
    for hook in hooks:
        hook.remove()
    return flops + 2 * model.fc_weight.numel()


# --- int8 -----------------------------------------------------------------------------------------

def calibrate_int8(model: DlibResNet, batches: list[torch.Tensor]) -> dict[str, list[float]]:
    """The [min, max] of every activation that the int8 network quantizes, over `batches` of real
    face chips (float NCHW 0..255): the stem's output and, per block, conv1 (after relu), conv2
    (before the add) and the block's output. `facenet_cli/nets/dlib_resnet_int8.py` keeps the
    ranges measured once on LFW chips, so int8 results do not depend on the user's first batch."""
    ranges: dict[str, list[float]] = {}

    def observe(name: str, x: torch.Tensor) -> None:
        low, high = float(x.min()), float(x.max())
        old = ranges.get(name, [low, high])
        ranges[name] = [min(old[0], low), max(old[1], high)]

    with torch.inference_mode():
        for images in batches:
            x = F.relu(model.stem(images))
            observe("stem", x)
            x = max_pool_unpadded(x, model.stem_pool_window, model.stem_pool_stride)
            for i, block in enumerate(model.blocks):
                h = F.relu(block.conv1(x))
                observe(f"{i}.conv1", h)
                observe(f"{i}.conv2", block.conv2(h))
                x = block(x)
                observe(f"{i}.out", x)
    return ranges


def _qparams(value_range: list[float]) -> tuple[float, int]:
    """quint8 scale and zero point covering [min(low, 0), max(high, 0)] in 256 steps. (fbgemm's
    reduce_range, 128 steps against int16 saturation on CPUs without VNNI, measured 3x worse
    here once the stem, whose 0..255 inputs did saturate, stays in fp32.)"""
    low, high = min(value_range[0], 0.0), max(value_range[1], 0.0)
    scale = max((high - low) / 255.0, 1e-8)
    return scale, int(min(255, max(0, round(-low / scale))))


def _quantized_conv(conv: FoldedConv, value_range: list[float], relu: bool):
    """A fbgemm int8 convolution (per-channel symmetric weights) computing `conv` (then relu)."""
    from torch.ao.nn.intrinsic.quantized import ConvReLU2d
    from torch.ao.nn.quantized import Conv2d

    out_channels, in_channels, rows, cols = conv.weight.shape
    module = (ConvReLU2d if relu else Conv2d)(in_channels, out_channels, (rows, cols), stride=conv.stride,
                                              padding=conv.padding)
    weight = conv.weight.detach().float()
    scales = weight.abs().amax(dim=(1, 2, 3)).clamp(min=1e-12) / 127.0
    qweight = torch.quantize_per_channel(weight, scales.double(), torch.zeros(out_channels, dtype=torch.long), 0,
                                         torch.qint8)
    module.set_weight_bias(qweight, conv.bias.detach().float())
    module.scale, module.zero_point = _qparams(value_range)
    return module


class Int8DlibResNet(nn.Module):
    """dlib's ResNet with int8 convolutions (static quantisation, fbgemm/x86), built from the fp32
    network and the activation ranges of `calibrate_int8`.

    Every convolution but the stem runs u8 x s8 with per-channel weight scales and a per-tensor
    activation scale; identity residual additions stay quantized (add_relu); the stem, the four
    zero-padded additions of the downsampling blocks, the last pool and the fc run in fp32.
    CPU only (PyTorch's quantized kernels).
    """

    def __init__(self, model: DlibResNet, ranges: dict[str, list[float]]):
        super().__init__()
        import warnings

        from torch.ao.nn.quantized import QFunctional

        # The stem stays fp32: its inputs are 0..255, and on CPUs without VNNI fbgemm's u8 x s8
        # pair sums saturate int16 there (measured: 16% error in that layer alone).
        self.stem = model.stem
        self.stem_qparams = _qparams(ranges["stem"])
        self.stem_pool_window, self.stem_pool_stride = model.stem_pool_window, model.stem_pool_stride
        with warnings.catch_warnings():  # PyTorch flags its quantized-tensor API as deprecated
            warnings.simplefilter("ignore", UserWarning)
            self.conv1 = nn.ModuleList(_quantized_conv(b.conv1, ranges[f"{i}.conv1"], True)
                                       for i, b in enumerate(model.blocks))
            self.conv2 = nn.ModuleList(_quantized_conv(b.conv2, ranges[f"{i}.conv2"], False)
                                       for i, b in enumerate(model.blocks))
        self.adds = nn.ModuleList()
        self.out_qparams = [_qparams(ranges[f"{i}.out"]) for i in range(len(model.blocks))]
        for scale, zero_point in self.out_qparams:
            add = QFunctional()
            add.scale, add.zero_point = scale, zero_point
            self.adds.append(add)
        self.downsample = [b.downsample for b in model.blocks]
        self.pools = [(getattr(b, "pool_window", None), getattr(b, "pool_stride", None)) for b in model.blocks]
        self.fc_weight = model.fc_weight
        self.fc_bias = model.fc_bias

    @property
    def embedding_dim(self) -> int:
        return self.fc_weight.shape[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # Quantized before the max pool, not after: rounding to the grid keeps order, so the
        # pooled values are the same, and uint8 pooling costs a third of fp32's here.
        x = torch.quantize_per_tensor(F.relu_(self.stem(images)).contiguous(memory_format=torch.channels_last),
                                      *self.stem_qparams, torch.quint8)
        x = F.max_pool2d(x, self.stem_pool_window, self.stem_pool_stride)
        for i in range(len(self.conv2)):
            main = self.conv2[i](self.conv1[i](x))
            if not self.downsample[i]:
                x = self.adds[i].add_relu(main, x)
                continue
            window, stride = self.pools[i]
            shortcut = F.avg_pool2d(x.dequantize(), window, stride)
            total = F.relu_(zero_padded_add(main.dequantize(), shortcut))
            x = torch.quantize_per_tensor(total, *self.out_qparams[i], torch.quint8)
        x = x.dequantize().mean(dim=(2, 3))
        return F.linear(x, self.fc_weight, self.fc_bias)


def int8_dlib_resnet(model: DlibResNet) -> Int8DlibResNet:
    """The int8 network of `model`, with the activation ranges measured on LFW chips."""
    from .dlib_resnet_int8 import ACTIVATION_RANGES

    return Int8DlibResNet(model, ACTIVATION_RANGES).eval()
