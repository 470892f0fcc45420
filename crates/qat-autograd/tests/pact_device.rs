//! PACT without host reads ([`pact_fake_quant_device`]) against the host-parameter form
//! ([`pact_fake_quant`]): values and both gradients bit for bit over several bit widths and clip
//! values, no device→host read, and NaN outputs (not a silently dead layer) for an `α` that the host
//! form refuses.

use qat_autograd::{FakeQuantError, host_read, pact_fake_quant, pact_fake_quant_device};
use tch::{Kind, Tensor};

type Op = fn(&Tensor, &Tensor, u32) -> Result<Tensor, FakeQuantError>;

/// Output bits, `∂/∂x` bits and `∂/∂α` of `op` on `xs` with clip `a` at `bits` bits.
fn run(op: Op, xs: &Tensor, a: f32, bits: u32) -> (Vec<u32>, Vec<u32>, f64) {
    let x = xs.copy().set_requires_grad(true);
    let alpha = Tensor::from_slice(&[a]).set_requires_grad(true);
    let y = op(&x, &alpha, bits).unwrap();
    y.sum(Kind::Float).backward();
    let to_bits = |t: &Tensor| -> Vec<u32> {
        Vec::<f32>::try_from(t.detach().flatten(0, -1))
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    };
    (
        to_bits(&y),
        to_bits(&x.grad()),
        alpha.grad().double_value(&[0]),
    )
}

#[test]
fn device_form_equals_host_form_bit_for_bit() {
    // Every value of a fine grid over [−1, 4], including values on and next to each clip.
    let xs = Tensor::linspace(-1.0, 4.0, 4001, (Kind::Float, tch::Device::Cpu));
    for bits in [2, 4, 8] {
        for a in [0.37f32, 1.0, 2.0, 2.55, 3.999, 1e-3] {
            let host = run(pact_fake_quant, &xs, a, bits);
            let dev = run(pact_fake_quant_device, &xs, a, bits);
            assert_eq!(host.0, dev.0, "values, {bits} bits, alpha {a}");
            assert_eq!(host.1, dev.1, "d/dx, {bits} bits, alpha {a}");
            assert_eq!(host.2, dev.2, "d/dalpha, {bits} bits, alpha {a}");
            assert!(host.2 > 0.0 || a > 3.9, "some values lie above alpha {a}");
        }
    }
}

#[test]
fn device_form_reads_nothing_back() {
    let x =
        Tensor::linspace(-1.0, 4.0, 64, (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    let alpha = Tensor::from_slice(&[2.0f32]).set_requires_grad(true);
    let before = host_read::count();
    let y = pact_fake_quant_device(&x, &alpha, 8).unwrap();
    y.sum(Kind::Float).backward();
    assert_eq!(host_read::count(), before);
    // The host form reads α once (the count is wired).
    let _ = pact_fake_quant(&x, &alpha, 8).unwrap();
    assert_eq!(host_read::count(), before + 1);
}

#[test]
fn refused_alpha_gives_nan_outputs() {
    let x = Tensor::from_slice(&[-1.0f32, 0.0, 0.5, 3.0]);
    for a in [-1.0f32, 0.0, f32::NAN, f32::INFINITY] {
        let alpha = Tensor::from_slice(&[a]);
        assert!(matches!(
            pact_fake_quant(&x, &alpha, 8),
            Err(FakeQuantError::NonPositive { .. })
        ));
        let y = Vec::<f32>::try_from(pact_fake_quant_device(&x, &alpha, 8).unwrap()).unwrap();
        assert!(y.iter().all(|v| v.is_nan()), "alpha {a}: {y:?}");
    }
}
