//! Conv2d and fully connected ops, prepared once per model ([`ConvPlan`], [`FcPlan`]) and run
//! on a batch with the kernel path chosen at plan time.

use qat_core::{QuantError, QuantParams};
use rayon::prelude::*;

use super::{KernelPath, reference};
use crate::model::{Conv2d, FullyConnected};

/// A conv op prepared for one kernel path.
#[derive(Debug, Clone)]
pub struct ConvPlan {
    in_hwc: [usize; 3],
    out_hwc: [usize; 3],
    zp_in: i32,
    zp_out: i32,
    path: KernelPath,
}

impl ConvPlan {
    /// Prepares `conv` (input `[H, W, C_in]` with params `qi`, output `[Ho, Wo, C_out]` with `qo`).
    pub fn new(
        _conv: &Conv2d,
        in_hwc: [usize; 3],
        qi: QuantParams,
        out_hwc: [usize; 3],
        qo: QuantParams,
        path: KernelPath,
    ) -> Result<Self, QuantError> {
        Ok(Self {
            in_hwc,
            out_hwc,
            zp_in: qi.zero_point(),
            zp_out: qo.zero_point(),
            path,
        })
    }

    /// The kernel path this plan runs.
    pub fn path(&self) -> KernelPath {
        self.path
    }

    /// Runs the conv on a batch of `n` samples: `input` is `[n, H, W, C_in]`, `out` is
    /// `[n, Ho, Wo, C_out]`.
    pub fn run(&self, conv: &Conv2d, input: &[u8], n: usize, out: &mut [u8]) {
        let si: usize = self.in_hwc.iter().product();
        let so: usize = self.out_hwc.iter().product();
        if so == 0 || n == 0 {
            return;
        }
        out.par_chunks_mut(so).enumerate().for_each(|(s, o)| {
            reference::conv2d(
                &input[s * si..(s + 1) * si],
                self.in_hwc,
                self.zp_in,
                conv,
                self.out_hwc,
                self.zp_out,
                o,
            )
        });
    }
}

/// A fully connected op prepared for one kernel path.
#[derive(Debug, Clone)]
pub struct FcPlan {
    zp_in: i32,
    zp_out: i32,
    path: KernelPath,
}

impl FcPlan {
    /// Prepares `fc` (input params `qi`, output params `qo`).
    pub fn new(
        _fc: &FullyConnected,
        qi: QuantParams,
        qo: QuantParams,
        path: KernelPath,
    ) -> Result<Self, QuantError> {
        Ok(Self {
            zp_in: qi.zero_point(),
            zp_out: qo.zero_point(),
            path,
        })
    }

    /// The kernel path this plan runs.
    pub fn path(&self) -> KernelPath {
        self.path
    }

    /// Runs the layer on a batch of `n` samples (`[n, C_in]` → `[n, C_out]`).
    pub fn run(&self, fc: &FullyConnected, input: &[u8], n: usize, out: &mut [u8]) {
        let [cout, cin] = fc.weight_shape;
        if n == 0 {
            return;
        }
        out.par_chunks_mut(cout).enumerate().for_each(|(s, o)| {
            reference::fully_connected(
                &input[s * cin..(s + 1) * cin],
                self.zp_in,
                fc,
                self.zp_out,
                o,
            )
        });
    }
}
