"""The Silero VAD graph split in two for whole signals (see `silero.py`'s docstring).

`split_model` takes the packaged ONNX model's bytes and returns two ONNX models: the
encoder (the graph's own STFT + convolution nodes for one sample rate, which see only their
own window, so any number of windows can run in one call) and the recurrent part (its LSTM
over a whole sequence of encoder features, then the decoder). The `onnx` package is not a
dependency, so this is a minimal reader and writer of the protobuf wire format for the few
onnx.proto messages the split touches; nodes are copied byte for byte.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

# A minimal reader and writer of the protobuf wire format, for the few onnx.proto messages
# the split touches (field numbers from onnx.proto); nodes are copied byte for byte.
_MODEL_IR_VERSION, _MODEL_GRAPH, _MODEL_OPSET_IMPORT = 1, 7, 8
_GRAPH_NODE, _GRAPH_NAME, _GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT = 1, 2, 5, 11, 12
_NODE_INPUT, _NODE_OUTPUT, _NODE_NAME, _NODE_OP_TYPE, _NODE_ATTRIBUTE = 1, 2, 3, 4, 5
_ATTR_NAME, _ATTR_T, _ATTR_G = 1, 5, 6
_TENSOR_DIMS, _TENSOR_DATA_TYPE, _TENSOR_NAME, _TENSOR_RAW_DATA = 1, 2, 8, 9
_TENSOR_FLOAT_DATA, _TENSOR_INT64_DATA = 4, 7
_VALUE_INFO_NAME, _VALUE_INFO_TYPE, _TYPE_TENSOR, _TENSOR_TYPE_ELEM = 1, 2, 1, 1
_DTYPES = {1: np.dtype("<f4"), 7: np.dtype("<i8")}  # onnx FLOAT, INT64
_ONNX_FLOAT = 1


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int | bytes, bytes]]:
    """(field number, value, the field's own bytes) of each field of one message."""
    pos = 0
    while pos < len(buf):
        start = pos
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 2:
            size, pos = _read_varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise ValueError(f"protobuf wire type {wire} not expected in an ONNX model")
        yield number, value, buf[start:pos]


def _varint(value: int) -> bytes:
    if value < 0:
        raise ValueError("negative varint")
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _bytes_field(number: int, payload: bytes | str) -> bytes:
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


@dataclass(frozen=True)
class _Node:
    op_type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: tuple[bytes, ...]  # AttributeProto messages, as found

    @classmethod
    def parse(cls, raw: bytes) -> _Node:
        found: dict[int, list[bytes]] = {}
        for number, value, _ in _fields(raw):
            if isinstance(value, bytes):
                found.setdefault(number, []).append(value)
        text = {k: tuple(v.decode() for v in found.get(k, [])) for k in (1, 2, 3, 4)}
        return cls(
            op_type=text[_NODE_OP_TYPE][0] if text[_NODE_OP_TYPE] else "",
            name=text[_NODE_NAME][0] if text[_NODE_NAME] else "",
            inputs=text[_NODE_INPUT],
            outputs=text[_NODE_OUTPUT],
            attributes=tuple(found.get(_NODE_ATTRIBUTE, [])),
        )

    def attribute(self, name: str, field: int) -> bytes:
        """The bytes of one field (a tensor, a graph) of the attribute called `name`."""
        for attr in self.attributes:
            values = {n: v for n, v, _ in _fields(attr)}
            if values.get(_ATTR_NAME) == name.encode() and isinstance(values.get(field), bytes):
                return values[field]  # type: ignore[return-value]
        raise ValueError(f"{self.op_type} node {self.name!r} has no attribute {name!r}")

    def encode(self, inputs: Sequence[str], outputs: Sequence[str]) -> bytes:
        """This node with other input and output names (same op and attributes)."""
        return b"".join(
            [
                *(_bytes_field(_NODE_INPUT, i) for i in inputs),
                *(_bytes_field(_NODE_OUTPUT, o) for o in outputs),
                _bytes_field(_NODE_NAME, self.name),
                _bytes_field(_NODE_OP_TYPE, self.op_type),
                *(_bytes_field(_NODE_ATTRIBUTE, a) for a in self.attributes),
            ]
        )


def _graph_nodes(graph: bytes) -> list[tuple[_Node, bytes]]:
    return [
        (_Node.parse(v), v)
        for n, v, _ in _fields(graph)
        if n == _GRAPH_NODE and isinstance(v, bytes)
    ]


def _packed_varints(value: int | bytes) -> list[int]:
    if isinstance(value, int):
        return [value]
    out, pos = [], 0
    while pos < len(value):
        v, pos = _read_varint(value, pos)
        out.append(v)
    return out


def _tensor(raw: bytes) -> np.ndarray:
    """A float32 or int64 TensorProto as an array (raw_data, float_data or int64_data)."""
    dims: list[int] = []
    dtype: int | None = None
    data = b""
    ints: list[int] = []
    for number, value, _ in _fields(raw):
        if number == _TENSOR_DIMS:
            dims += _packed_varints(value)
        elif number == _TENSOR_DATA_TYPE and isinstance(value, int):
            dtype = value
        elif number in (_TENSOR_RAW_DATA, _TENSOR_FLOAT_DATA) and isinstance(value, bytes):
            data += value  # float_data is packed fixed32: the same bytes as raw_data
        elif number == _TENSOR_INT64_DATA:
            ints += [v - (1 << 64) if v >= 1 << 63 else v for v in _packed_varints(value)]
    if dtype not in _DTYPES:
        raise ValueError(f"constant of ONNX data type {dtype} not expected")
    array = np.array(ints, dtype=np.int64) if ints else np.frombuffer(data, _DTYPES[dtype])
    return array.astype(_DTYPES[dtype].newbyteorder("=")).reshape(dims)


def _tensor_proto(name: str, array: np.ndarray) -> bytes:
    dtype = next(k for k, v in _DTYPES.items() if v == array.dtype.newbyteorder("<"))
    return b"".join(
        [
            *(_int_field(_TENSOR_DIMS, d) for d in array.shape),
            _int_field(_TENSOR_DATA_TYPE, dtype),
            _bytes_field(_TENSOR_NAME, name),
            _bytes_field(_TENSOR_RAW_DATA, np.ascontiguousarray(array, _DTYPES[dtype]).tobytes()),
        ]
    )


def _float_value_info(name: str) -> bytes:
    """A graph input/output of float tensors, shape left open."""
    tensor_type = _int_field(_TENSOR_TYPE_ELEM, _ONNX_FLOAT)
    return _bytes_field(_VALUE_INFO_NAME, name) + _bytes_field(
        _VALUE_INFO_TYPE, _bytes_field(_TYPE_TENSOR, tensor_type)
    )


def _model(header: bytes, name: str, nodes: Sequence[bytes], inputs: Sequence[bytes],
           outputs: Sequence[bytes], initializers: Sequence[bytes] = ()) -> bytes:  # fmt: skip
    graph = b"".join(
        [
            *(_bytes_field(_GRAPH_NODE, n) for n in nodes),
            _bytes_field(_GRAPH_NAME, name),
            *(_bytes_field(_GRAPH_INITIALIZER, t) for t in initializers),
            *(_bytes_field(_GRAPH_INPUT, i) for i in inputs),
            *(_bytes_field(_GRAPH_OUTPUT, o) for o in outputs),
        ]
    )
    return header + _bytes_field(_MODEL_GRAPH, graph)


def _find(nodes: Sequence[_Node], op_type: str, name_part: str) -> _Node:
    found = [n for n in nodes if n.op_type == op_type and name_part in n.name]
    if not found:
        raise ValueError(f"no {op_type} node named like {name_part!r}")
    return found[-1]


def _all_nodes(graph: bytes) -> Iterator[_Node]:
    """Every node of a graph and of the graphs nested in its nodes' attributes."""
    for node, _ in _graph_nodes(graph):
        yield node
        for attr in node.attributes:
            for number, value, _ in _fields(attr):
                if number == _ATTR_G and isinstance(value, bytes):
                    yield from _all_nodes(value)


def split_model(model: bytes, sample_rate: int) -> tuple[bytes, bytes]:
    """The Silero graph for one sample rate as two ONNX models (bytes):

    - encoder: `input` (B, context + window) -> `features` (B, 128, 1), the graph's own
      STFT and convolution nodes for that rate, unchanged;
    - recurrent: `x` (T, 1, 128) features of T consecutive windows, `h0`, `c0` (1, 1, 128)
      -> `p` (T, 1, 1) speech probabilities and the LSTM's final `h`, `c`: the graph's LSTM
      (its weights in ONNX gate order, as the graph's own Slice/Concat nodes arrange
      them) run over the whole sequence, then its ReLU, 1x1 Conv and Sigmoid.

    Raises ValueError for a graph not laid out like Silero VAD v5/v6.
    """
    header, graph = b"", b""
    for number, value, raw in _fields(model):
        if number in (_MODEL_IR_VERSION, _MODEL_OPSET_IMPORT):
            header += raw
        elif number == _MODEL_GRAPH and isinstance(value, bytes):
            graph = value
    top = _graph_nodes(graph)
    inputs = {}
    for number, value, _ in _fields(graph):
        if number == _GRAPH_INPUT and isinstance(value, bytes):
            name = next(v for n, v, _ in _fields(value) if n == _VALUE_INFO_NAME)
            inputs[name.decode() if isinstance(name, bytes) else ""] = value
    # The top level is If(sr == R): the then branch serves rate R, the else branch the other.
    producers = {o: node for node, _ in top for o in node.outputs}
    branch_if = _find([n for n, _ in top], "If", "")
    equal = producers[branch_if.inputs[0]]
    if equal.op_type != "Equal" or "sr" not in equal.inputs:
        raise ValueError("top-level If does not test the sample rate")
    rate_value = producers[next(i for i in equal.inputs if i != "sr")]
    rate = int(_tensor(rate_value.attribute("value", _ATTR_T)))
    branch = branch_if.attribute("then_branch" if sample_rate == rate else "else_branch", _ATTR_G)

    nodes = _graph_nodes(branch)
    plain = [n for n, _ in nodes]
    producer = {o: i for i, (n, _) in enumerate(nodes) for o in n.outputs}
    features = _find(plain, "Relu", "/encoder/").outputs[0]
    needed, stack = set(), [features]
    while stack:
        value = stack.pop()
        if value in producer and producer[value] not in needed:
            needed.add(producer[value])
            stack.extend(nodes[producer[value]][0].inputs)
    outside = {i for k in needed for i in nodes[k][0].inputs if i and i not in producer}
    if outside != {"input"}:
        raise ValueError(f"encoder depends on {sorted(outside)}, not only on the input")
    encoder_nodes = [raw for k, (_, raw) in enumerate(nodes) if k in needed]
    identity = _Node("Identity", "features", (), (), ())
    encoder = _model(
        header, "silero_vad_encoder",
        [*encoder_nodes, identity.encode([features], ["features"])],
        [inputs["input"]], [_float_value_info("features")],
    )  # fmt: skip

    constants = {n.outputs[0]: n for n in plain if n.op_type == "Constant" and len(n.outputs) == 1}

    def weight(suffix: str) -> np.ndarray:
        name = next((k for k in constants if k.endswith(suffix)), None)
        if name is None:
            raise ValueError(f"no constant {suffix}")
        return _tensor(constants[name].attribute("value", _ATTR_T))

    def onnx_gates(w: np.ndarray) -> np.ndarray:
        # PyTorch stacks the LSTM gates i, f, g, o; ONNX wants i, o, f, g (its "c").
        i, f, g, o = np.split(w, 4)
        return np.concatenate([i, o, f, g])

    w_ih, w_hh = weight("decoder.rnn.weight_ih"), weight("decoder.rnn.weight_hh")
    b_ih, b_hh = weight("decoder.rnn.bias_ih"), weight("decoder.rnn.bias_hh")
    hidden = w_hh.shape[1]
    lstm = next((n for n in _all_nodes(branch) if n.op_type == "LSTM"), None)
    if lstm is None:
        raise ValueError("no LSTM node")
    relu = _find(plain, "Relu", "/decoder/decoder/")
    conv = _find(plain, "Conv", "/decoder/decoder/")
    sigmoid = _find(plain, "Sigmoid", "/decoder/decoder/")
    recurrent = _model(
        header,
        "silero_vad_recurrent",
        [
            lstm.encode(["x", "W", "R", "B", "", "h0", "c0"], ["y", "h", "c"]),
            _Node("Reshape", "to_conv", (), (), ()).encode(["y", "conv_shape"], ["y_t"]),
            relu.encode(["y_t"], ["relu"]),
            conv.encode(["relu", "conv_w", "conv_b"], ["logit"]),
            sigmoid.encode(["logit"], ["p"]),
        ],
        [_float_value_info(n) for n in ("x", "h0", "c0")],
        [_float_value_info(n) for n in ("p", "h", "c")],
        [
            _tensor_proto("W", onnx_gates(w_ih)[np.newaxis]),
            _tensor_proto("R", onnx_gates(w_hh)[np.newaxis]),
            _tensor_proto("B", np.concatenate([onnx_gates(b_ih), onnx_gates(b_hh)])[np.newaxis]),
            # y is (T, 1, 1, hidden): the decoder's Conv takes (T, hidden, 1), as in the graph.
            _tensor_proto("conv_shape", np.array([-1, hidden, 1], dtype=np.int64)),
            _tensor_proto("conv_w", weight("decoder.decoder.2.weight")),
            _tensor_proto("conv_b", weight("decoder.decoder.2.bias")),
        ],
    )
    return encoder, recurrent
