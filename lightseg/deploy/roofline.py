"""How far a model is from this machine's limits: a measured roofline.

* :func:`measure_ceiling`: the fp32 compute ceiling is the fastest of the kernels a conv net runs on here:
  oneDNN convolutions (PyTorch, NHWC) and MLAS convolutions (ONNX Runtime) at several shapes, and a large GEMM
  in both; memory bandwidth is a large copy (read + write counted, STREAM's convention). Each kernel's best
  run counts: on a shared machine the fastest run is the one least disturbed.
* :func:`graph_traffic`: the minimum bytes a model's exported ONNX graph moves: every weight once, and each
  layer reads its inputs and writes its outputs once. A layer is a node that computes; elementwise nodes
  (activation, residual add) that take a tensor only they consume from a convolution or another elementwise
  node are fused into it (ONNX Runtime does so), so that tensor never goes to memory; views and Concat (the
  producers can write into the concatenated buffer) move nothing.
* :func:`roofline`: the two lower bounds on latency (FLOPs / ceiling, bytes / bandwidth); the larger is the
  bound, and efficiency = bound / measured latency.
"""
from __future__ import annotations

import time

import numpy as np
import torch

# Ops that only reinterpret or describe a tensor (no data moved), and Concat (written in place by its producers).
VIEW_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Constant", "Size", "Concat",
            "ConstantOfShape", "Cast", "Gather", "Range", "Dropout"}
ELEMENTWISE_OPS = {"Relu", "Clip", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Add", "Mul",
                   "Sub", "Div", "Sum", "BatchNormalization", "Neg", "Abs", "Max", "Min"}
COMPUTE_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
# (kernel, in channels, out channels, height, width) of the convolutions timed for the ceiling: a segmentation
# net's 3x3 and 1x1 layers at batch 1, from full to 1/8 resolution of a 512x1024 input.
CEILING_CONVS = ((3, 64, 64, 256, 512), (3, 128, 128, 128, 256), (3, 256, 256, 64, 128), (1, 256, 256, 128, 256))
GEMM_N = 2048
COPY_MIB = 256


def _best_ms(fn, budget_s, min_runs=3, max_runs=50):
    fn()  # first call: allocation, kernel selection
    times, start = [], time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return min(times)


def _ort_single_op(op, inputs, weights, output_shape, threads, **attrs):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    names = [f"in{i}" for i in range(len(inputs))]
    inits = [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)]
    node = helper.make_node(op, names + [t.name for t in inits], ["out"], **attrs)
    graph = helper.make_graph([node], "ceiling", [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(x.shape))
                                                  for n, x in zip(names, inputs)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, list(output_shape))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = dict(zip(names, inputs))
    onnx.checker.check_model(model)
    return lambda: session.run(None, feed)


def measure_ceiling(budget_s=0.6, threads=None, convs=CEILING_CONVS) -> dict:
    """This CPU's fp32 GFLOP/s ceiling and copy bandwidth (GB/s), with each kernel's own figure."""
    threads = threads or torch.get_num_threads()
    rng = np.random.default_rng(0)
    kernels = {}
    with torch.inference_mode():
        a, b = torch.randn(GEMM_N, GEMM_N), torch.randn(GEMM_N, GEMM_N)
        flops = 2 * GEMM_N**3
        kernels[f"torch mm {GEMM_N}^3"] = flops / _best_ms(lambda: torch.mm(a, b), budget_s) / 1e6
        an, bn = a.numpy(), b.numpy()
        run = _ort_single_op("MatMul", [an], [bn], (GEMM_N, GEMM_N), threads)
        kernels[f"onnxruntime MatMul {GEMM_N}^3"] = flops / _best_ms(run, budget_s) / 1e6
        for k, cin, cout, h, w in convs:
            flops = 2 * h * w * cin * cout * k * k
            name = f"{k}x{k} conv {cin}->{cout} at {h}x{w}"
            conv = torch.nn.Conv2d(cin, cout, k, padding=k // 2, bias=False).eval().to(memory_format=torch.channels_last)
            x = torch.randn(1, cin, h, w).contiguous(memory_format=torch.channels_last)
            kernels[f"torch (oneDNN, NHWC) {name}"] = flops / _best_ms(lambda: conv(x), budget_s) / 1e6
            weight = rng.standard_normal((cout, cin, k, k), dtype=np.float32)
            run = _ort_single_op("Conv", [x.contiguous().numpy()], [weight], (1, cout, h, w), threads,
                                 pads=[k // 2] * 4)
            kernels[f"onnxruntime (MLAS) {name}"] = flops / _best_ms(run, budget_s) / 1e6
        # Bandwidth: a copy far larger than the caches; bytes moved = read + write.
        src = torch.ones(COPY_MIB * 2**20 // 4)
        dst = torch.empty_like(src)
        copy_gb_s = 2 * src.numel() * 4 / _best_ms(lambda: dst.copy_(src), budget_s) / 1e6
    best = max(kernels, key=kernels.get)
    return {"fp32_gflops": round(kernels[best], 1), "best_kernel": best, "copy_gb_s": round(copy_gb_s, 1),
            "kernels": {k: round(v, 1) for k, v in kernels.items()}, "threads": threads,
            "method": "fp32 ceiling: fastest of the listed kernels (best run of each); bandwidth: "
                      f"{COPY_MIB} MiB tensor copy, 2 x bytes per copy"}


def graph_traffic(model_bytes: bytes) -> dict:
    """Minimum bytes moved by an exported (static-shape) ONNX graph; see the module docstring for the rules."""
    import os
    import tempfile

    import onnx
    import onnxruntime as ort
    from onnx import helper

    # ONNX Runtime's basic level (constant folding, Conv+BN/Add/Mul folds) first: shape computations the exporter
    # left in the graph (adaptive pooling sizes) become constants, and shape inference then knows every tensor.
    with tempfile.TemporaryDirectory(prefix="lightseg_roofline_") as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath, opts.log_severity_level = os.path.join(tmp, "basic.onnx"), 3
        ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
        model = onnx.load_model(opts.optimized_model_filepath)
    graph = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
    sizes = {}
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        t = vi.type.tensor_type
        dims = [d.dim_value for d in t.shape.dim]
        if dims and all(d > 0 for d in dims):
            sizes[vi.name] = int(np.prod(dims)) * np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)).itemsize
    weights = {t.name: int(np.prod(t.dims)) * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
               for t in graph.initializer}
    producer = {out: n for n in graph.node for out in n.output}
    consumers = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    outputs = {o.name for o in graph.output}

    def fused(tensor):
        """A tensor that stays in registers: made by a conv/elementwise node, used only by one elementwise node."""
        users, made_by = consumers.get(tensor, []), producer.get(tensor)
        return (made_by is not None and tensor not in outputs and len(users) == 1
                and users[0].op_type in ELEMENTWISE_OPS and made_by.op_type in COMPUTE_OPS | ELEMENTWISE_OPS)

    activation_bytes, layers = 0, 0
    for n in graph.node:
        if n.op_type in VIEW_OPS:
            continue
        layers += 1
        for name in [*n.input, *n.output]:
            if name and name not in weights and not fused(name):
                activation_bytes += sizes.get(name, 0)
    weight_bytes = sum(weights.values())
    return {"weight_bytes": weight_bytes, "activation_bytes": activation_bytes,
            "bytes": weight_bytes + activation_bytes, "layers": layers,
            "unknown_shapes": sum(1 for n in graph.node for o in n.output if o not in sizes and n.op_type not in VIEW_OPS)}


def roofline(flops: float, bytes_moved: float, ceiling: dict) -> dict:
    """The two lower bounds on latency (ms) and the bound itself (the larger)."""
    compute_ms = flops / (ceiling["fp32_gflops"] * 1e9) * 1000.0
    memory_ms = bytes_moved / (ceiling["copy_gb_s"] * 1e9) * 1000.0
    return {"bound_compute_ms": round(compute_ms, 3), "bound_memory_ms": round(memory_ms, 3),
            "bound_ms": round(max(compute_ms, memory_ms), 3), "bound_by": "compute" if compute_ms >= memory_ms else "memory"}
