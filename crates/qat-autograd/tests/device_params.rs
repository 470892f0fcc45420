//! Fake quant with device-resident parameters ([`DeviceQParams`]) against the host-parameter ops:
//! values and gradients bit for bit, on every path (one-pass CPU kernels with one and two libtorch
//! threads, composed ops on strided tensors and without gradient), both STEs, per tensor and per
//! channel, with the fused clamp; and no host read.

use qat_autograd::testing::{THREADS, bits, lcg_stepped as lcg, per_tensor_cases};
use qat_autograd::{
    DeviceQParams, Ste, TensorQParams, clamp_fake_quant_device, clamp_fake_quant_per_tensor,
    fake_quant, fake_quant_device, host_read,
};
use qat_core::{PerChannelParams, QuantRange};
use tch::{Device, Tensor};

/// `(value, gradient)` of `f` at `x` (a fresh leaf; the strided case takes a transposed view).
fn run(xs: &[f32], strided: bool, f: impl Fn(&Tensor) -> Tensor) -> (Vec<u32>, Vec<u32>) {
    let leaf = Tensor::from_slice(xs)
        .view([20, 50])
        .set_requires_grad(true);
    let x = if strided {
        leaf.tr()
    } else {
        leaf.shallow_clone()
    };
    let y = f(&x);
    // A non-uniform upstream gradient, so that a wrong mask cannot hide.
    let w = Tensor::from_slice(&lcg(99, xs.len(), 0.5, 1.5)).view(y.size().as_slice());
    (y * w).sum(None).backward();
    let value = bits(&f(&x.detach()));
    (value, bits(&leaf.grad()))
}

#[test]
fn per_tensor_device_ops_equal_the_host_ops() {
    let _guard = THREADS.lock().unwrap_or_else(|e| e.into_inner());
    let before = tch::get_num_threads();
    let cases = per_tensor_cases();
    for threads in [1, 2] {
        tch::set_num_threads(threads);
        for (i, p) in cases.iter().enumerate() {
            let mut xs = lcg(i as u64, 1000, -7.0, 7.0);
            // Exact ties of x·(1/S) and grid ends.
            xs[0] = 0.5 * p.scale();
            xs[1] = p.real_range().1;
            xs[2] = p.real_range().0;
            let dp = DeviceQParams::from_host(&TensorQParams::PerTensor(*p), Device::Cpu).unwrap();
            for strided in [false, true] {
                for ste in [Ste::Clipped, Ste::Plain] {
                    let what = format!("{threads} threads, case {i}, strided {strided}, {ste:?}");
                    let reads = host_read::count();
                    let dev = run(&xs, strided, |x| fake_quant_device(x, &dp, ste).unwrap());
                    assert_eq!(host_read::count(), reads, "{what}: host read");
                    let host = run(&xs, strided, |x| {
                        fake_quant(x, &TensorQParams::PerTensor(*p), ste).unwrap()
                    });
                    assert_eq!(dev, host, "{what}");
                    for (lo, hi) in [(0.0, f32::INFINITY), (0.0, 6.0), (-0.5, 1.5)] {
                        let dev = run(&xs, strided, |x| {
                            clamp_fake_quant_device(x, lo, hi, &dp, ste).unwrap()
                        });
                        let host = run(&xs, strided, |x| {
                            clamp_fake_quant_per_tensor(x, lo, hi, p, ste).unwrap()
                        });
                        assert_eq!(dev, host, "{what}, clamp [{lo}, {hi}]");
                    }
                }
            }
        }
    }
    tch::set_num_threads(before);
}

#[test]
fn per_channel_device_op_equals_the_host_op() {
    let r = QuantRange::signed_narrow(8).unwrap();
    let p = PerChannelParams::symmetric(&[1.27, 0.3, 2.0, 0.01], r, 0).unwrap();
    let tp = TensorQParams::PerChannel(p);
    let dp = DeviceQParams::from_host(&tp, Device::Cpu).unwrap();
    assert_eq!(dp.to_host().unwrap(), tp);
    let xs = lcg(5, 4 * 250, -2.5, 2.5);
    for ste in [Ste::Clipped, Ste::Plain] {
        let f = |x: &Tensor, dev: bool| {
            let x = x.view([4, 250]);
            if dev {
                fake_quant_device(&x, &dp, ste).unwrap()
            } else {
                fake_quant(&x, &tp, ste).unwrap()
            }
        };
        let dev = run(&xs, false, |x| f(x, true));
        let host = run(&xs, false, |x| f(x, false));
        assert_eq!(dev, host, "{ste:?}");
    }
}

#[test]
fn shapes_are_checked() {
    let r = QuantRange::unsigned(8).unwrap();
    let two = || Tensor::from_slice(&[0.1f32, 0.2]);
    assert!(DeviceQParams::new(two(), Tensor::from_slice(&[0i32]), r, Some(0)).is_err());
    assert!(DeviceQParams::new(two(), Tensor::from_slice(&[0i32, 1]), r, None).is_err());
    let p = DeviceQParams::new(two(), Tensor::from_slice(&[0i32, 1]), r, Some(0)).unwrap();
    let x = Tensor::zeros([3, 4], (tch::Kind::Float, Device::Cpu));
    assert!(fake_quant_device(&x, &p, Ste::Clipped).is_err());
    assert!(clamp_fake_quant_device(&x, 0.0, 6.0, &p, Ste::Clipped).is_err());
}
