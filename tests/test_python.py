#!/usr/bin/env python3
"""test_python — python/lorafuse.py against a double-precision reference written here, on the CPU
backend: the layer and the delta (f32, awkward shapes, bias, beta, a strided x), a bad call
(status, message, y untouched), many adapters (per-token and segment forms, ranks per adapter,
tokens without one, hot swap), memory helpers, a PEFT adapter against PEFT's own outputs
(tests/fixtures), what the binding refuses (resized buffers, views of closed adapters, short id
tables, host copies past a buffer, closed contexts; reference cycles) and the version.
Usage: test_python.py LIBRARY (liblorafuse.so)."""
import ctypes
import gc
import json
import math
import os
import random
import struct
import sys
from array import array

os.environ["LORAFUSE_LIBRARY"] = sys.argv[1]
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import lorafuse  # noqa: E402

failed = passed = 0


def check(ok, what):
    global failed, passed
    if ok:
        passed += 1
    else:
        failed += 1
        print(f"FAIL {what}")


def rand(rng, n):
    # never zero: a zero B (PEFT's initial value) would hide the LoRA term
    return array("f", [rng.choice((-1, 1)) * rng.uniform(0.05, 1.0) for _ in range(n)])


def layer_case(ctx, m, k, n, r, with_w, with_bias, beta, x_stride, seed):
    rng = random.Random(seed)
    x = rand(rng, (m - 1) * x_stride + k)
    w, a, b, bias, y0 = rand(rng, n * k), rand(rng, r * k), rand(rng, n * r), rand(rng, n), rand(rng, m * n)
    y = array("f", y0) if beta != 0.0 else array("f", [math.nan] * (m * n))
    scale = 0.75
    ctx.lora_forward(lorafuse.PEFT, lorafuse.Matrix(x, lorafuse.F32, m, k, x_stride),
                     lorafuse.Matrix(w, lorafuse.F32, n, k) if with_w else None,
                     lorafuse.Matrix(bias, lorafuse.F32, 1, n) if with_bias else None,
                     lorafuse.Matrix(a, lorafuse.F32, r, k), lorafuse.Matrix(b, lorafuse.F32, n, r), scale, beta,
                     lorafuse.Matrix(y, lorafuse.F32, m, n))
    bad = 0
    for i in range(m):
        xi = x[i * x_stride:i * x_stride + k]
        t = [sum(xi[c] * a[j * k + c] for c in range(k)) for j in range(r)]
        for j in range(n):
            terms = [scale * t[q] * b[j * r + q] for q in range(r)]
            if with_w:
                terms += [xi[c] * w[j * k + c] for c in range(k)]
            if with_bias:
                terms.append(bias[j])
            if beta != 0.0:
                terms.append(beta * y0[i * n + j])
            exact = math.fsum(terms)
            mag = sum(abs(v) for v in terms) + sum(abs(xi[c] * a[q * k + c]) for q in range(r) for c in range(k))
            tol = 2.0 ** -24 * abs(exact) + 2 * (k + r + 4) * 2.0 ** -24 * mag + 1e-45
            if not abs(y[i * n + j] - exact) <= tol:
                bad += 1
    check(bad == 0, f"layer {m}x{k}x{n} r{r} w={with_w} bias={with_bias} beta={beta}: {bad} elements off")


with lorafuse.Context(lorafuse.BACKEND_CPU) as ctx:
    check(ctx.backend == "cpu", f"backend {ctx.backend}")
    layer_case(ctx, 3, 7, 5, 2, True, True, 0.5, 9, 1)      # strided x, bias, beta
    layer_case(ctx, 1, 33, 17, 4, True, False, 0.0, 33, 2)  # one token, y poisoned with NaN
    layer_case(ctx, 6, 19, 11, 3, False, False, 1.0, 19, 3)  # the delta: y += s*(x*A^T)*B^T
    # A bad call: B with the wrong rank. The library refuses with a status and a message, and
    # leaves y as it was.
    x, a, b, y = array("f", [1.0] * 12), array("f", [1.0] * 8), array("f", [1.0] * 6), array("f", [7.0] * 6)
    try:
        ctx.lora_forward(lorafuse.PEFT, lorafuse.Matrix(x, lorafuse.F32, 3, 4), None, None,
                         lorafuse.Matrix(a, lorafuse.F32, 2, 4), lorafuse.Matrix(b, lorafuse.F32, 2, 3), 1.0, 1.0,
                         lorafuse.Matrix(y, lorafuse.F32, 3, 2))
        check(False, "a B of the wrong rank was accepted")
    except lorafuse.LoraFuseError as e:
        check(e.name == "LF_ERR_SHAPE_MISMATCH" and len(str(e)) > len(e.name) + 2, f"refusal: {e}")
    check(list(y) == [7.0] * 6, "the refused call changed y")


def multi_case(ctx, m, k, n, seed):
    """Three adapters of ranks 2, 4, 1 in a set of max rank 4, tokens mapped to them or to none
    (-1), the layer with bias and beta: per-token form against the reference, the segment form of
    the same mapping bitwise equal to it, then slot 1 replaced (hot swap) and checked again."""
    rng = random.Random(seed)
    ranks, scales = [2, 4, 1], [0.5, -1.25, 2.0]
    x, w, bias, y0 = rand(rng, m * k), rand(rng, n * k), rand(rng, n), rand(rng, m * n)
    adapters = [(rand(rng, r * k), rand(rng, n * r)) for r in ranks]
    ids = array("i", [-1, 0, 0, 1, 1, 1, 2, -1, 0][:m])
    beta = 0.5

    def expect(i, j, ads):
        terms = [x[i * k + c] * w[j * k + c] for c in range(k)] + [bias[j], beta * y0[i * n + j]]
        mag = 0.0
        if ids[i] >= 0:
            (a, b), r, s = ads[ids[i]], ranks[ids[i]], scales[ids[i]]
            t = [sum(x[i * k + c] * a[q * k + c] for c in range(k)) for q in range(r)]
            terms += [s * t[q] * b[j * r + q] for q in range(r)]
            mag = sum(abs(x[i * k + c] * a[q * k + c]) for q in range(r) for c in range(k))
        exact = math.fsum(terms)
        return exact, 2.0 ** -24 * abs(exact) + 2 * (k + 4 + 4) * 2.0 ** -24 * (sum(map(abs, terms)) + mag) + 1e-45

    def run(form, adapter_set):
        y = array("f", y0)
        args = (adapter_set, lorafuse.PEFT, lorafuse.Matrix(x, lorafuse.F32, m, k),
                lorafuse.Matrix(w, lorafuse.F32, n, k), lorafuse.Matrix(bias, lorafuse.F32, 1, n))
        if form == "tokens":
            ctx.lora_forward_multi(*args, ids, beta, lorafuse.Matrix(y, lorafuse.F32, m, n))
        else:  # runs of equal ids
            starts, seg = array("i"), array("i")
            for t in range(m):
                if t == 0 or ids[t] != ids[t - 1]:
                    starts.append(t)
                    seg.append(ids[t])
            starts.append(m)
            ctx.lora_forward_segments(*args, starts, seg, len(seg), beta, lorafuse.Matrix(y, lorafuse.F32, m, n))
        return y

    def bad_elements(y, ads):
        return sum(1 for i in range(m) for j in range(n)
                   if not abs(y[i * n + j] - expect(i, j, ads)[0]) <= expect(i, j, ads)[1])

    with lorafuse.AdapterSet(ctx, lorafuse.F32, k, n, 3, 4) as adapter_set:
        for slot, ((a, b), r) in enumerate(zip(adapters, ranks)):
            adapter_set.load(slot, lorafuse.PEFT, lorafuse.Matrix(a, lorafuse.F32, r, k),
                             lorafuse.Matrix(b, lorafuse.F32, n, r), scales[slot])
        check([adapter_set.rank(s) for s in range(3)] == ranks, "ranks of the loaded slots")
        y_tokens = run("tokens", adapter_set)
        check(bad_elements(y_tokens, adapters) == 0, f"multi {m}x{k}x{n}: per-token form")
        check(run("segments", adapter_set).tobytes() == y_tokens.tobytes(), "segment form differs from per-token")
        adapters[1] = (rand(rng, 4 * k), rand(rng, n * 4))  # hot swap of slot 1
        adapter_set.load(1, lorafuse.PEFT, lorafuse.Matrix(adapters[1][0], lorafuse.F32, 4, k),
                         lorafuse.Matrix(adapters[1][1], lorafuse.F32, n, 4), scales[1])
        check(bad_elements(run("tokens", adapter_set), adapters) == 0, "multi: after replacing slot 1")


with lorafuse.Context(lorafuse.BACKEND_CPU) as ctx:
    multi_case(ctx, 9, 13, 6, 4)
    # memory of the context's kind (host memory on the CPU) round trip
    src, back = array("f", [1.5, -2.0, 3.25, 0.125]), array("f", [0.0] * 4)
    p = ctx.malloc(16)
    ctx.memcpy(p, src, 16, lorafuse.HOST_TO_DEVICE)
    ctx.memcpy(back, p, 16, lorafuse.DEVICE_TO_HOST)
    ctx.synchronize()
    ctx.free(p)
    check(list(back) == list(src), "malloc / memcpy round trip")


def safetensors(path):
    """A safetensors file's F32 tensors, read here without the library: {name: (shape, array("f"))}."""
    with open(path, "rb") as f:
        blob = f.read()
    (size,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + size])
    out = {}
    for name, t in header.items():
        if name != "__metadata__" and t["dtype"] == "F32":
            begin, end = t["data_offsets"]
            out[name] = (t["shape"], array("f", blob[8 + size + begin:8 + size + end]))
    return out


def peft_case(ctx):
    """PEFT's own fixture (tests/fixtures, f32): the adapter opened from Python, its modules'
    ranks and scales as PEFT's config means them (rank_pattern, alpha_pattern), the weights as the
    file holds them, and each module's layer y = x*W^T + scale*(x*A^T)*B^T against PEFT's output."""
    fixtures = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
    with open(os.path.join(fixtures, "adapter_f32", "adapter_config.json")) as f:
        config = json.load(f)
    tensors = safetensors(os.path.join(fixtures, "adapter_f32", "adapter_model.safetensors"))
    base, io = safetensors(os.path.join(fixtures, "base_f32.safetensors")), safetensors(os.path.join(fixtures, "io_f32.safetensors"))
    adapter = lorafuse.PeftAdapter(ctx, os.path.join(fixtures, "adapter_f32"))
    check(adapter.r == config["r"] and adapter.lora_alpha == config["lora_alpha"] and len(adapter.modules) == 14,
          f"adapter info: r {adapter.r}, alpha {adapter.lora_alpha}, {len(adapter.modules)} modules")
    worst = 0.0
    for module in adapter.modules:
        rank = next((r for key, r in config["rank_pattern"].items() if module.name.endswith("." + key)), config["r"])
        alpha = next((a for key, a in config["alpha_pattern"].items() if module.name.endswith("." + key)),
                     config["lora_alpha"])
        check(module.rank == rank and abs(module.scale - alpha / rank) < 1e-6, f"{module}: rank / scale")
        a, b = adapter.host_weights(module)
        key = "base_model.model." + module.name
        for view, t in ((a, key + ".lora_A.weight"), (b, key + ".lora_B.weight")):
            shape, values = tensors[t]
            raw = ctypes.string_at(view._struct.data, len(values) * 4)
            check([view._struct.rows, view._struct.cols] == shape and raw == values.tobytes(), f"{t}: the view")
        (m, k), x = io[module.name + ".x"]
        _, y_peft = io[module.name + ".y"]
        _, w = base[module.base_tensor]
        y = array("f", [math.nan] * (m * module.out_features))
        ctx.lora_forward(lorafuse.PEFT, lorafuse.Matrix(x, lorafuse.F32, m, k),
                         lorafuse.Matrix(w, lorafuse.F32, module.out_features, k), None, a, b, module.scale, 0.0,
                         lorafuse.Matrix(y, lorafuse.F32, m, module.out_features))
        scale_y = max(abs(v) for v in y_peft)
        worst = max(worst, max(abs(p - q) for p, q in zip(y, y_peft)) / scale_y)
    check(worst < 1e-5, f"layers against PEFT's outputs: worst error {worst:.2e} of max |y|")
    try:
        adapter.find("model.layers.9.self_attn.q_proj")
        check(False, "a module that is not there was found")
    except lorafuse.LoraFuseError as e:
        check(e.name == "LF_ERR_NOT_FOUND", f"find: {e}")
    adapter.close()


with lorafuse.Context(lorafuse.BACKEND_CPU) as ctx:
    peft_case(ctx)


def expect_error(kind, what, call):
    try:
        call()
        check(False, f"{what}: accepted")
    except kind:
        check(True, what)


def lifetime_cases():
    """What the binding must refuse rather than let the library touch freed or foreign memory."""
    # A buffer a view points into cannot be resized while the view lives.
    y = array("f", [0.0] * 4)
    view = lorafuse.Matrix(y, lorafuse.F32, 2, 2)
    expect_error(BufferError, "resizing a viewed buffer", lambda: y.extend([1.0]))
    del view
    fixtures = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "adapter_f32")
    ctx = lorafuse.Context(lorafuse.BACKEND_CPU)
    adapter = lorafuse.PeftAdapter(ctx, fixtures)
    a, b = adapter.host_weights(adapter.modules[0])
    adapter.close()  # unmaps the file: the views must be refused, not read
    m0 = adapter.modules[0]
    x, out = array("f", [1.0] * m0.in_features), array("f", [0.0] * m0.out_features)
    expect_error(ValueError, "a view of a closed adapter", lambda: ctx.lora_forward(
        lorafuse.PEFT, lorafuse.Matrix(x, lorafuse.F32, 1, m0.in_features), None, None, a, b, 1.0, 1.0,
        lorafuse.Matrix(out, lorafuse.F32, 1, m0.out_features)))
    # Per-token ids: one per token, 4-byte items.
    with lorafuse.AdapterSet(ctx, lorafuse.F32, 4, 2, 1, 1) as adapter_set:
        x4, y2 = array("f", [1.0] * 12), array("f", [0.0] * 6)
        call = lambda ids: ctx.lora_forward_multi(adapter_set, lorafuse.PEFT, lorafuse.Matrix(x4, lorafuse.F32, 3, 4),
                                                  None, None, ids, 1.0, lorafuse.Matrix(y2, lorafuse.F32, 3, 2))
        expect_error(ValueError, "fewer ids than tokens", lambda: call(array("i", [0, 0])))
        expect_error(ValueError, "ids of 8 bytes", lambda: call(array("q", [0, 0, 0])))
        p = ctx.malloc(64)
        expect_error(ValueError, "memcpy past a host buffer", lambda: ctx.memcpy(p, x4, 64, lorafuse.HOST_TO_DEVICE))
        ctx.free(p)
    # A context closed under its children closes them first; they refuse use afterwards.
    kept = lorafuse.AdapterSet(ctx, lorafuse.F32, 4, 2, 1, 1)
    ctx.close()
    expect_error(ValueError, "an adapter set of a closed context", lambda: kept.rank(0))
    expect_error(ValueError, "a closed context", lambda: ctx.backend)
    # Reference cycles: whatever order the collector frees them in, the context goes last.
    for _ in range(3):
        c = lorafuse.Context(lorafuse.BACKEND_CPU)
        s = lorafuse.AdapterSet(c, lorafuse.F32, 4, 2, 1, 1)
        s.me, c.me = s, c
        del s, c
        gc.collect()
    check(True, "cycles collected without a crash")


lifetime_cases()
check(lorafuse.version().count(".") == 2, f"version {lorafuse.version()}")
try:
    lorafuse.Matrix(array("f", [0.0] * 3), lorafuse.F32, 2, 2)
    check(False, "a buffer too small for its view was accepted")
except ValueError:
    check(True, "")

print(f"test_python: {passed} passed, {failed} failed, 0 skipped")
sys.exit(1 if failed else 0)
