"""A small ONNX graph builder that streams weights into an aligned external-data file.

Every weight goes to `<block>.weights` at an offset aligned to WEIGHT_ALIGNMENT so
the Rust engine (and ORT) can memory-map it; only 0-d and integer constants stay inline.
Weights are written as they are added, so a block never holds more than one tensor's
bytes in the protobuf and large models stay far from protobuf's 2 GiB limit.

A builder made with `quantize_bits` (8 or 4) stores the matrices of `linear` layers as
ONNX Runtime's `MatMulNBits` (com.microsoft): symmetric blocks of QUANT_BLOCK input rows,
one float32 scale each, packed into uint8 (`model-format.md`, "Quantized blocks")."""

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17; onnxruntime 1.31 loads it
WEIGHT_ALIGNMENT = 4096

_ELEM = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64}
# Weights in the external-data file: float32, or the uint8 of packed quantized matrices.
_WEIGHT_TYPES = {np.dtype(np.float32): ("float32", TensorProto.FLOAT), np.dtype(np.uint8): ("uint8", TensorProto.UINT8)}
QUANT_BLOCK = 32  # input rows sharing one scale in a quantized matrix
MS_DOMAIN = "com.microsoft"


class GraphBuilder:
    """Collects nodes, inputs, outputs and initializers for one block graph."""

    def __init__(self, weights_path: Path, quantize_bits: int | None = None):
        if quantize_bits not in (None, 4, 8):
            raise ValueError(f"quantize_bits {quantize_bits}: 4 or 8")
        self.quantize_bits = quantize_bits
        self.weights_path = weights_path
        self._weights = open(weights_path, "wb")
        self._offset = 0
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        # Where each weight lives in the weights file: the Rust engine maps the file and
        # hands these ranges to ORT as external initializers, without reading the ONNX file.
        self.external: list[dict] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._names: dict[str, int] = {}
        self._consts: dict[tuple, str] = {}

    # --- values -------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        """A unique value name derived from hint (readable names help when debugging graphs)."""
        count = self._names.get(hint, 0)
        self._names[hint] = count + 1
        return hint if count == 0 else f"{hint}_{count}"

    def weight(self, name: str, array: np.ndarray) -> str:
        """Append a float32 weight to the external-data file at an aligned offset."""
        return self.stored(name, np.ascontiguousarray(array, dtype=np.float32))

    def stored(self, name: str, data: np.ndarray) -> str:
        """Append `data` (float32 or uint8, as it is) to the external-data file at an aligned offset."""
        dtype, onnx_type = _WEIGHT_TYPES[data.dtype]
        data = np.ascontiguousarray(data)
        pad = -self._offset % WEIGHT_ALIGNMENT
        if pad:
            self._weights.write(b"\0" * pad)
            self._offset += pad
        tensor = TensorProto(name=name, data_type=onnx_type, dims=list(data.shape))
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.weights_path.name), ("offset", str(self._offset)),
                           ("length", str(data.nbytes))):
            tensor.external_data.add(key=key, value=value)
        self.external.append({"name": name, "dtype": dtype, "shape": list(data.shape),
                              "offset": self._offset, "length": data.nbytes})
        self._weights.write(data.tobytes())
        self._offset += data.nbytes
        self.initializers.append(tensor)
        return name

    def const(self, value, dtype: str = "int64") -> str:
        """An inline constant (shape vectors, axes, scalars); identical ones are shared."""
        array = np.asarray(value, dtype=np.int64 if dtype == "int64" else np.float32)
        key = (dtype, array.shape, array.tobytes())
        if key not in self._consts:
            name = self.fresh(f"const_{dtype}")
            self.initializers.append(onnx.numpy_helper.from_array(array, name))
            self._consts[key] = name
        return self._consts[key]

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, outputs: int | list[str] = 1,
           **attrs) -> str | list[str]:
        """Add a node; returns its output name (or list of names when outputs > 1)."""
        if isinstance(outputs, int):
            names = [self.fresh(hint or op_type.lower()) for _ in range(outputs)]
        else:
            names = outputs
        self.nodes.append(helper.make_node(op_type, inputs, names, name=self.fresh(f"node/{names[0]}"), **attrs))
        return names[0] if len(names) == 1 else names

    # --- interface ----------------------------------------------------------------------
    def add_input(self, name: str, dtype: str, shape: list) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, _ELEM[dtype], shape))
        return name

    def add_output(self, value: str, name: str, dtype: str, shape: list) -> None:
        """Expose `value` as graph output `name` (through an Identity when names differ)."""
        if value != name:
            self.op("Identity", [value], outputs=[name])
        self.outputs.append(helper.make_tensor_value_info(name, _ELEM[dtype], shape))

    @property
    def weight_bytes(self) -> int:
        return self._offset

    def save(self, graph_path: Path, graph_name: str) -> None:
        """Write the .onnx file and close the weights file."""
        self._weights.close()
        graph = helper.make_graph(self.nodes, graph_name, self.inputs, self.outputs, self.initializers)
        opsets = [helper.make_opsetid("", OPSET)]
        if any(node.domain == MS_DOMAIN for node in self.nodes):
            opsets.append(helper.make_opsetid(MS_DOMAIN, 1))
        model = helper.make_model(graph, opset_imports=opsets,
                                  producer_name="infergrid-import-model", ir_version=IR_VERSION)
        graph_path.write_bytes(model.SerializeToString())
        onnx.checker.check_model(str(graph_path))  # by path, so the external data resolves


# --- layers shared by the families -----------------------------------------------------------

NEG_FILL = float(np.finfo(np.float32).min)  # masked scores; finite so an all-masked row cannot NaN


def quantized(weight_in_out: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """W [in, out] as MatMulNBits wants it: packed uint8 [out, blocks, QUANT_BLOCK·bits/8] and
    float32 scales [out·blocks], symmetric (no zero points), from ONNX Runtime's own packer."""
    from onnxruntime.capi import _pybind_state as ort_native

    w = np.ascontiguousarray(weight_in_out, dtype=np.float32)
    k, n = w.shape
    blocks = -(-k // QUANT_BLOCK)
    packed = np.zeros((n, blocks, QUANT_BLOCK * bits // 8), dtype=np.uint8)
    scales = np.zeros(n * blocks, dtype=np.float32)
    zero_points = np.zeros(n * -(-blocks * bits // 8), dtype=np.uint8)  # unused: symmetric
    pack = ort_native.quantize_matmul_8bits if bits == 8 else ort_native.quantize_matmul_4bits
    pack(packed, w, scales, zero_points, QUANT_BLOCK, n, k, True)
    return packed, scales


def linear(g: GraphBuilder, x: str, name: str, weight_in_out: np.ndarray, bias: np.ndarray | None = None) -> str:
    """x @ W (+ b) with W stored [in, out], the layout MatMul wants without a Transpose; a
    quantizing builder stores W packed and multiplies with MatMulNBits."""
    if g.quantize_bits is None:
        y = g.op("MatMul", [x, g.weight(f"{name}.weight", weight_in_out)], hint=name)
    else:
        k, n = weight_in_out.shape
        packed, scales = quantized(weight_in_out, g.quantize_bits)
        inputs = [x, g.stored(f"{name}.weight.q{g.quantize_bits}", packed), g.stored(f"{name}.weight.scales", scales)]
        # accuracy_level 4: ORT quantizes the activations to int8 too and multiplies in
        # integers; without it the CPU kernel dequantizes 8-bit weights every call, about 20×
        # slower than the float MatMul it replaces (2× faster with it, measured on 576×1536).
        y = g.op("MatMulNBits", inputs, hint=name, domain=MS_DOMAIN, K=k, N=n, bits=g.quantize_bits,
                 block_size=QUANT_BLOCK, accuracy_level=4)
    if bias is not None:
        y = g.op("Add", [y, g.weight(f"{name}.bias", bias)], hint=f"{name}.out")
    return y


def layer_norm(g: GraphBuilder, x: str, name: str, weight: np.ndarray, bias: np.ndarray, eps: float) -> str:
    return g.op("LayerNormalization", [x, g.weight(f"{name}.weight", weight), g.weight(f"{name}.bias", bias)],
                hint=name, axis=-1, epsilon=eps)


def rms_norm(g: GraphBuilder, x: str, name: str, weight: np.ndarray, eps: float) -> str:
    """Llama RMSNorm: w · x / sqrt(mean(x²) + eps) (ORT fuses this pattern)."""
    mean_sq = g.op("ReduceMean", [g.op("Mul", [x, x], hint=f"{name}.sq")], hint=f"{name}.ms", axes=[-1], keepdims=1)
    denom = g.op("Sqrt", [g.op("Add", [mean_sq, g.const(eps, "float32")], hint=f"{name}.var")], hint=f"{name}.rms")
    return g.op("Mul", [g.op("Div", [x, denom], hint=f"{name}.norm"), g.weight(f"{name}.weight", weight)], hint=name)


def gelu(g: GraphBuilder, x: str, variant: str, hint: str) -> str:
    """GELU, exact (erf) or the tanh approximation, from opset-17 primitives."""
    half_x = g.op("Mul", [x, g.const(0.5, "float32")], hint=f"{hint}.half")
    if variant == "gelu":
        inner = g.op("Erf", [g.op("Mul", [x, g.const(1 / np.sqrt(2.0), "float32")], hint=f"{hint}.s")], hint=f"{hint}.erf")
    else:
        cube = g.op("Mul", [g.op("Mul", [x, x], hint=f"{hint}.x2"), x], hint=f"{hint}.x3")
        poly = g.op("Add", [x, g.op("Mul", [cube, g.const(0.044715, "float32")], hint=f"{hint}.c")], hint=f"{hint}.p")
        inner = g.op("Tanh", [g.op("Mul", [poly, g.const(np.sqrt(2 / np.pi), "float32")], hint=f"{hint}.s")],
                     hint=f"{hint}.tanh")
    return g.op("Mul", [half_x, g.op("Add", [inner, g.const(1.0, "float32")], hint=f"{hint}.one")], hint=hint)


def silu(g: GraphBuilder, x: str, hint: str) -> str:
    return g.op("Mul", [x, g.op("Sigmoid", [x], hint=f"{hint}.sig")], hint=hint)


def attention(g: GraphBuilder, name: str, q: str, k: str, v: str, *, heads: int, kv_heads: int, head_dim: int,
              allowed: str, past: tuple[str, str] | None = None, rotary=None) -> tuple[str, str, str]:
    """Scaled dot-product attention with grouped KV heads and an optional KV cache.

    q: [B,S,heads·D], k/v: [B,S,kv_heads·D] projections. Queries are laid out
    [B, KV, rep, S, D] so each group of `rep` query heads meets its KV head through
    MatMul broadcasting: the GQA repeat costs no copy and matches HF's repeat_kv
    (query head h uses KV head h // rep). `allowed` is a bool mask broadcastable to
    [B, KV, rep, S, T]; `rotary(x, hint, rank)` applies position encoding to q (rank 5) and k
    (rank 4) in head layout. Returns (context [B,S,heads·D], present_key, present_value) with
    present = concat(past, new)."""
    rep = heads // kv_heads
    q5 = g.op("Transpose", [g.op("Reshape", [q, g.const([0, -1, kv_heads, rep, head_dim])], hint=f"{name}.q5")],
              hint=f"{name}.qh", perm=[0, 2, 3, 1, 4])
    kh = g.op("Transpose", [g.op("Reshape", [k, g.const([0, -1, kv_heads, head_dim])], hint=f"{name}.k4")],
              hint=f"{name}.kh", perm=[0, 2, 1, 3])
    vh = g.op("Transpose", [g.op("Reshape", [v, g.const([0, -1, kv_heads, head_dim])], hint=f"{name}.v4")],
              hint=f"{name}.vh", perm=[0, 2, 1, 3])
    if rotary is not None:
        q5, kh = rotary(q5, f"{name}.q", 5), rotary(kh, f"{name}.k", 4)
    if past is not None:
        kh = g.op("Concat", [past[0], kh], hint=f"{name}.present_k", axis=2)
        vh = g.op("Concat", [past[1], vh], hint=f"{name}.present_v", axis=2)
    axis2 = g.const([2])
    # Transposing the last two axes right before the MatMul lets ONNX Runtime fold it into the
    # product (FusedMatMul transB): no copy of the whole cache per layer and step, which the
    # other order (Transpose, then Unsqueeze) made: 17-21% more decode tokens/s, one session or 8
    # batched, on the 126 MB bench llama at 64-128 cached tokens.
    k_t = g.op("Transpose", [g.op("Unsqueeze", [kh, axis2], hint=f"{name}.k5")], hint=f"{name}.kt5",
               perm=[0, 1, 2, 4, 3])
    q_scaled = g.op("Mul", [q5, g.const(1.0 / np.sqrt(head_dim), "float32")], hint=f"{name}.qs")
    scores = g.op("MatMul", [q_scaled, k_t], hint=f"{name}.scores")
    scores = g.op("Where", [allowed, scores, g.const(NEG_FILL, "float32")], hint=f"{name}.masked")
    probs = g.op("Softmax", [scores], hint=f"{name}.probs", axis=-1)
    ctx = g.op("MatMul", [probs, g.op("Unsqueeze", [vh, axis2], hint=f"{name}.v5")], hint=f"{name}.ctx5")
    ctx = g.op("Transpose", [ctx], hint=f"{name}.ctxt", perm=[0, 3, 1, 2, 4])
    ctx = g.op("Reshape", [ctx, g.const([0, 0, -1])], hint=f"{name}.ctx")
    return ctx, kh, vh
