//! Tensor sizes like a transformer's, for the per-tensor benchmark rows (bench/cpu.rs,
//! bench/gpu.rs; bench/gacc_bench.c and bench/peers.py build the same list).
//!
//! `tensors` must be a multiple of 8: layers = tensors / 8, each layer holding
//! [ln1.weight d, ln1.bias d, qkv 3d^2, proj d^2, ln2.weight d, ln2.bias d, fc1 4d^2,
//! fc2 4d^2], with d the largest multiple of 8 for which layers * (12 d^2 + 4 d) <=
//! params. So 64 tensors at 64M parameters are 8 layers of d = 832, 512 tensors at
//! 16M are 64 layers of d = 144: a few large matrices and many small vectors.

/// The tensor sizes, in creation order.
pub fn transformer_sizes(params: usize, tensors: usize) -> Vec<usize> {
    assert!(tensors >= 8 && tensors.is_multiple_of(8), "tensor count must be a multiple of 8");
    let layers = tensors / 8;
    let per_layer = params / layers;
    let mut d = 8usize;
    while 12 * (d + 8) * (d + 8) + 4 * (d + 8) <= per_layer {
        d += 8;
    }
    let layer = [d, d, 3 * d * d, d * d, d, d, 4 * d * d, 4 * d * d];
    (0..layers).flat_map(|_| layer).collect()
}
