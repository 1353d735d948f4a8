//! The binding against a double-precision reference written here, on the CPU backend: the layer
//! with bias and beta and a strided x, the delta alone, many adapters (ranks per adapter, tokens
//! without one, hot swap), a refused call (status, message, y untouched) and the version. Needs LORAFUSE_LIB_DIR at build time (ctest sets it).
use lorafuse::{AdapterSet, Backend, Context, DType, Layout, View, ViewMut};

/// Deterministic values in ±[0.05, 1], never zero (a zero B would hide the LoRA term).
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 40) as f32 / (1u64 << 24) as f32;
            let v = 0.05 + 0.95 * u;
            if s & 1 == 0 {
                v
            } else {
                -v
            }
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn layer_case(m: usize, k: usize, n: usize, r: usize, with_w: bool, beta: f32, x_stride: usize, seed: u64) {
    let x = values(seed, (m - 1) * x_stride + k);
    let (w, a, b, bias, y0) = (
        values(seed + 1, n * k),
        values(seed + 2, r * k),
        values(seed + 3, n * r),
        values(seed + 4, n),
        values(seed + 5, m * n),
    );
    let mut y = if beta != 0.0 { y0.clone() } else { vec![f32::NAN; m * n] };
    let scale = 0.75f32;
    let ctx = Context::new(Backend::Cpu).expect("a CPU context");
    assert_eq!(ctx.backend(), Backend::Cpu);
    let (wv, bv) = (View::f32(&w, n, k), View::f32(&bias, 1, n));
    ctx.lora_forward(
        Layout::Peft,
        &View::f32_strided(&x, m, k, x_stride),
        with_w.then_some(&wv),
        with_w.then_some(&bv),
        &View::f32(&a, r, k),
        &View::f32(&b, n, r),
        scale,
        beta,
        &mut ViewMut::f32(&mut y, m, n),
    )
    .expect("the layer runs");
    let mut bad = 0;
    for i in 0..m {
        let xi = &x[i * x_stride..i * x_stride + k];
        let t: Vec<f64> = (0..r)
            .map(|q| (0..k).map(|c| xi[c] as f64 * a[q * k + c] as f64).sum())
            .collect();
        for j in 0..n {
            let mut terms: Vec<f64> = (0..r).map(|q| scale as f64 * t[q] * b[j * r + q] as f64).collect();
            if with_w {
                terms.extend((0..k).map(|c| xi[c] as f64 * w[j * k + c] as f64));
                terms.push(bias[j] as f64);
            }
            if beta != 0.0 {
                terms.push(beta as f64 * y0[i * n + j] as f64);
            }
            let exact: f64 = terms.iter().sum();
            let mag: f64 = terms.iter().map(|v| v.abs()).sum::<f64>()
                + (0..r)
                    .map(|q| (0..k).map(|c| (xi[c] * a[q * k + c]).abs() as f64).sum::<f64>())
                    .sum::<f64>();
            let u = 2f64.powi(-24);
            let tol = u * exact.abs() + 2.0 * (k + r + 4) as f64 * u * mag + 1e-45;
            let within = (y[i * n + j] as f64 - exact).abs() <= tol; // false for NaN
            if !within {
                bad += 1;
            }
        }
    }
    assert_eq!(
        bad, 0,
        "layer {m}x{k}x{n} r{r} w={with_w} beta={beta}: {bad} elements off"
    );
}

#[test]
fn layer_against_reference() {
    layer_case(3, 7, 5, 2, true, 0.5, 9, 1); // strided x, bias, beta
    layer_case(1, 33, 17, 4, true, 0.0, 33, 2); // one token, y poisoned with NaN
}

#[test]
fn delta_against_reference() {
    layer_case(6, 19, 11, 3, false, 1.0, 19, 3); // y += s·(x·Aᵀ)·Bᵀ
}

#[test]
fn refused_call_leaves_y() {
    let (x, a, b) = (vec![1.0f32; 12], vec![1.0f32; 8], vec![1.0f32; 6]);
    let mut y = vec![7.0f32; 6];
    let ctx = Context::new(Backend::Cpu).unwrap();
    // B [2, 3] where [2, r = 2] is expected
    let err = ctx
        .lora_forward(
            Layout::Peft,
            &View::f32(&x, 3, 4),
            None,
            None,
            &View::f32(&a, 2, 4),
            &View::f32(&b, 2, 3),
            1.0,
            1.0,
            &mut ViewMut::f32(&mut y, 3, 2),
        )
        .unwrap_err();
    assert_eq!(err.name, "LF_ERR_SHAPE_MISMATCH");
    assert!(!err.message.is_empty(), "{err}");
    assert_eq!(y, vec![7.0f32; 6]);
}

#[test]
fn version_is_three_numbers() {
    assert_eq!(lorafuse::version().split('.').count(), 3);
}

/// Three adapters of ranks 2, 4, 1 in a set of max rank 4, tokens mapped to them or to none; the
/// layer with bias and beta against the reference, then slot 1 replaced and checked again.
#[test]
fn many_adapters_against_reference() {
    let (m, k, n) = (9usize, 13usize, 6usize);
    let ranks = [2usize, 4, 1];
    let scales = [0.5f32, -1.25, 2.0];
    let ids: [i32; 9] = [-1, 0, 0, 1, 1, 1, 2, -1, 0];
    let (x, w, bias, y0) = (values(10, m * k), values(11, n * k), values(12, n), values(13, m * n));
    let mut adapters: Vec<(Vec<f32>, Vec<f32>)> = ranks
        .iter()
        .enumerate()
        .map(|(i, &r)| (values(20 + i as u64, r * k), values(30 + i as u64, n * r)))
        .collect();
    let beta = 0.5f32;
    let ctx = Context::new(Backend::Cpu).unwrap();
    let mut set = AdapterSet::new(&ctx, DType::F32, k as i64, n as i64, 3, 4).unwrap();
    for (slot, ((a, b), &r)) in adapters.iter().zip(ranks.iter()).enumerate() {
        set.load(
            slot as i32,
            Layout::Peft,
            &View::f32(a, r, k),
            &View::f32(b, n, r),
            scales[slot],
        )
        .unwrap();
    }
    assert_eq!((0..3).map(|s| set.rank(s)).collect::<Vec<_>>(), vec![2, 4, 1]);
    let check = |set: &AdapterSet, adapters: &[(Vec<f32>, Vec<f32>)]| {
        let mut y = y0.clone();
        ctx.lora_forward_multi(
            set,
            Layout::Peft,
            &View::f32(&x, m, k),
            Some(&View::f32(&w, n, k)),
            Some(&View::f32(&bias, 1, n)),
            &ids,
            beta,
            &mut ViewMut::f32(&mut y, m, n),
        )
        .unwrap();
        let mut bad = 0;
        for i in 0..m {
            for j in 0..n {
                let mut terms: Vec<f64> = (0..k).map(|c| x[i * k + c] as f64 * w[j * k + c] as f64).collect();
                terms.push(bias[j] as f64);
                terms.push(beta as f64 * y0[i * n + j] as f64);
                let mut mag_t = 0.0;
                if ids[i] >= 0 {
                    let s = ids[i] as usize;
                    let (a, b, r) = (&adapters[s].0, &adapters[s].1, ranks[s]);
                    for q in 0..r {
                        let t: f64 = (0..k).map(|c| x[i * k + c] as f64 * a[q * k + c] as f64).sum();
                        mag_t += (0..k).map(|c| (x[i * k + c] * a[q * k + c]).abs() as f64).sum::<f64>();
                        terms.push(scales[s] as f64 * t * b[j * r + q] as f64);
                    }
                }
                let exact: f64 = terms.iter().sum();
                let u = 2f64.powi(-24);
                let tol =
                    u * exact.abs() + 2.0 * (k + 8) as f64 * u * (terms.iter().map(|v| v.abs()).sum::<f64>() + mag_t);
                let within = (y[i * n + j] as f64 - exact).abs() <= tol; // false for NaN
                if !within {
                    bad += 1;
                }
            }
        }
        bad
    };
    assert_eq!(check(&set, &adapters), 0, "per-token adapters");
    adapters[1] = (values(40, 4 * k), values(41, n * 4)); // hot swap of slot 1
    set.load(
        1,
        Layout::Peft,
        &View::f32(&adapters[1].0, 4, k),
        &View::f32(&adapters[1].1, n, 4),
        scales[1],
    )
    .unwrap();
    assert_eq!(check(&set, &adapters), 0, "after replacing slot 1");
    set.clear(2).unwrap();
    assert_eq!(set.rank(2), 0);
}
