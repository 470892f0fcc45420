//! Data-parallel QAT across processes and machines on PyTorch's own collectives.
//!
//! A [`ProcessGroup`] is a c10d process group from the libtorch that tch links: rank 0 serves a
//! `TCPStore` for the rendezvous, every rank connects to it, and the collectives run on the Gloo
//! backend (the one `torch.distributed` uses on CPUs; it also takes CUDA tensors, staging them
//! through the host, a path not yet run in this project's tests). It implements
//! [`qat_train::trainer::collective::Collective`], so [`qat_train::trainer::train_distributed`]
//! trains one replica per rank: each rank takes every `W`-th batch, gradients are averaged before
//! each step,
//!
//! ```text
//! g = (1/W) · Σ_{r=0}^{W-1} g_r        (the gradient of the mean loss over the global batch)
//! ```
//!
//! and the batch-norm and observer buffers are made equal after it, so the replicas stay equal.
//!
//! The environment is torchrun's, so the same binary starts under `torchrun`, a cluster scheduler
//! that sets these variables, or [`local_launch_env`] on one machine:
//!
//! | variable | meaning |
//! |---|---|
//! | `RANK` | this process's rank, `0..WORLD_SIZE` |
//! | `WORLD_SIZE` | number of processes |
//! | `MASTER_ADDR` | host of rank 0 (it serves the rendezvous store) |
//! | `MASTER_PORT` | TCP port of the store on that host |
//! | `GLOO_SOCKET_IFNAME` | optional: the network interface Gloo uses (e.g. `eth0`) |
//! | `QAT_DIST_TIMEOUT_S` | optional: seconds a rendezvous or collective may take (default 300) |
//!
//! ```no_run
//! use qat_dist::{GroupConfig, ProcessGroup};
//! use qat_train::trainer::collective::{Collective, ReduceOp};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let group = ProcessGroup::new(&GroupConfig::from_env()?)?;
//! let t = tch::Tensor::from_slice(&[group.rank() as f32]);
//! group.all_reduce(&t, ReduceOp::Sum)?; // 0 + 1 + … + (W-1) on every rank
//! # Ok(()) }
//! ```

use std::{
    ffi::{CStr, CString, c_char, c_int, c_void},
    net::TcpListener,
    ptr::NonNull,
    time::Duration,
};

use qat_train::trainer::collective::{Collective, CollectiveError, ReduceOp};
use tch::Tensor;

unsafe extern "C" {
    fn qat_dist_free_str(s: *mut c_char);
    fn qat_dist_group_new(
        host: *const c_char,
        port: u16,
        rank: c_int,
        world: c_int,
        timeout_ms: i64,
        ifname: *const c_char,
        err: *mut *mut c_char,
    ) -> *mut c_void;
    fn qat_dist_group_free(g: *mut c_void);
    fn qat_dist_all_reduce(
        g: *mut c_void,
        t: *mut c_void,
        op: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    fn qat_dist_broadcast(
        g: *mut c_void,
        t: *mut c_void,
        root: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    fn qat_dist_barrier(g: *mut c_void, err: *mut *mut c_char) -> c_int;
}

/// Errors of setting up a group.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DistError {
    /// An environment variable is missing or malformed.
    #[error("environment variable {var}: {reason}")]
    Env {
        /// The variable.
        var: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The configuration is inconsistent.
    #[error("process group configuration: {0}")]
    Config(String),
    /// The rendezvous or the backend failed (c10d's message, e.g. a timeout waiting for ranks).
    #[error(
        "joining the process group as rank {rank} of {world} at {host}:{port} failed: {message}"
    )]
    Init {
        /// This rank.
        rank: usize,
        /// The world size.
        world: usize,
        /// The store's host.
        host: String,
        /// The store's port.
        port: u16,
        /// What c10d said.
        message: String,
    },
    /// A collective failed.
    #[error(transparent)]
    Collective(#[from] CollectiveError),
}

/// Where and as whom to join a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// Host of rank 0's rendezvous store.
    pub host: String,
    /// Its TCP port (not 0).
    pub port: u16,
    /// This process's rank, `< world_size`.
    pub rank: usize,
    /// Number of processes, ≥ 1.
    pub world_size: usize,
    /// How long the rendezvous and each collective may take before they fail.
    pub timeout: Duration,
    /// The network interface for Gloo (`None`: the one the host name resolves to).
    pub interface: Option<String>,
}

/// The default [`GroupConfig::timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Largest accepted world size (a bound on what one configuration can ask for).
pub const MAX_WORLD_SIZE: usize = 1 << 16;

fn env_var(var: &'static str) -> Result<Option<String>, DistError> {
    match std::env::var(var) {
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(DistError::Env {
            var,
            reason: "not valid UTF-8".into(),
        }),
    }
}

fn parse_env<T: std::str::FromStr>(var: &'static str, v: &str) -> Result<T, DistError>
where
    T::Err: std::fmt::Display,
{
    v.trim().parse().map_err(|e| DistError::Env {
        var,
        reason: format!("{v:?}: {e}"),
    })
}

impl GroupConfig {
    /// The configuration torchrun's variables describe (see the [crate docs](crate)); a missing
    /// `RANK`, `WORLD_SIZE`, `MASTER_ADDR` or `MASTER_PORT` is an error naming it.
    pub fn from_env() -> Result<Self, DistError> {
        let need = |var: &'static str| {
            env_var(var)?.ok_or(DistError::Env {
                var,
                reason: "not set (torchrun and cluster launchers set it)".into(),
            })
        };
        let cfg = Self {
            host: need("MASTER_ADDR")?,
            port: parse_env("MASTER_PORT", &need("MASTER_PORT")?)?,
            rank: parse_env("RANK", &need("RANK")?)?,
            world_size: parse_env("WORLD_SIZE", &need("WORLD_SIZE")?)?,
            timeout: match env_var("QAT_DIST_TIMEOUT_S")? {
                Some(v) => {
                    let s: f64 = parse_env("QAT_DIST_TIMEOUT_S", &v)?;
                    if !(s > 0.0 && s <= 7.0 * 86_400.0) {
                        return Err(DistError::Env {
                            var: "QAT_DIST_TIMEOUT_S",
                            reason: format!("{v:?}: not in (0, 604800] seconds"),
                        });
                    }
                    Duration::from_secs_f64(s)
                }
                None => DEFAULT_TIMEOUT,
            },
            interface: env_var("GLOO_SOCKET_IFNAME")?.filter(|s| !s.is_empty()),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the configuration without contacting anyone.
    ///
    /// ```
    /// use qat_dist::GroupConfig;
    /// let ok = GroupConfig::local(0, 2, 29500);
    /// assert!(ok.validate().is_ok());
    /// let bad = GroupConfig { rank: 2, ..ok };
    /// assert!(bad.validate().unwrap_err().to_string().contains("rank 2"));
    /// ```
    pub fn validate(&self) -> Result<(), DistError> {
        let bad = |m: String| Err(DistError::Config(m));
        if self.world_size == 0 || self.world_size > MAX_WORLD_SIZE {
            return bad(format!(
                "world size {} is not in 1..={MAX_WORLD_SIZE}",
                self.world_size
            ));
        }
        if self.rank >= self.world_size {
            return bad(format!(
                "rank {} is not below the world size {}",
                self.rank, self.world_size
            ));
        }
        if self.port == 0 {
            return bad("port 0: rank 0's store needs a fixed port the others can reach".into());
        }
        if self.host.is_empty() || self.host.contains('\0') {
            return bad(format!("host {:?} is empty or has a NUL byte", self.host));
        }
        if self.interface.as_deref().is_some_and(|i| i.contains('\0')) {
            return bad("interface name has a NUL byte".into());
        }
        if self.timeout.is_zero() || self.timeout.as_millis() > i64::MAX as u128 {
            return bad(format!("timeout {:?} is out of range", self.timeout));
        }
        Ok(())
    }

    /// A group on this machine (`127.0.0.1:port`, loopback interface, default timeout).
    pub fn local(rank: usize, world_size: usize, port: u16) -> Self {
        Self {
            host: "127.0.0.1".into(),
            port,
            rank,
            world_size,
            timeout: DEFAULT_TIMEOUT,
            interface: None,
        }
    }
}

/// The environment of rank `rank` of `world` processes on this machine, rendezvous at
/// `127.0.0.1:port` (what torchrun's `--nproc-per-node` sets), for launching workers with
/// `std::process::Command::envs`.
///
/// ```
/// let env = qat_dist::local_launch_env(1, 2, 29500);
/// assert!(env.contains(&("RANK".to_string(), "1".to_string())));
/// assert!(env.contains(&("MASTER_PORT".to_string(), "29500".to_string())));
/// ```
pub fn local_launch_env(rank: usize, world: usize, port: u16) -> Vec<(String, String)> {
    [
        ("RANK", rank.to_string()),
        ("LOCAL_RANK", rank.to_string()),
        ("WORLD_SIZE", world.to_string()),
        ("LOCAL_WORLD_SIZE", world.to_string()),
        ("MASTER_ADDR", "127.0.0.1".to_string()),
        ("MASTER_PORT", port.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// A TCP port on 127.0.0.1 that was free a moment ago (for a local launch; another process may
/// still take it before rank 0 binds it).
pub fn free_local_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One rank's membership of a c10d process group (Gloo backend). Dropping it leaves the group.
///
/// It is `Send` but not `Sync`: collectives must be issued in the same order on every rank, which
/// calls from several threads at once would not guarantee.
pub struct ProcessGroup {
    raw: NonNull<c_void>,
    rank: usize,
    world: usize,
}

// SAFETY: c10d process groups and stores are used from any thread in PyTorch (their work runs on
// the backend's own threads, guarded by its locks); the handle is only freed on drop.
unsafe impl Send for ProcessGroup {}

/// Takes the C side's error message (if any) and frees it.
fn take_err(err: *mut c_char) -> String {
    if err.is_null() {
        return "failed without a message".into();
    }
    // SAFETY: a non-null `err` is a NUL-terminated string malloc'd by the C side, freed once here.
    let msg = unsafe { CStr::from_ptr(err) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: allocated by the C side with malloc; not used after this.
    unsafe { qat_dist_free_str(err) };
    msg
}

impl ProcessGroup {
    /// Joins the group `cfg` describes: blocks until every rank has joined (or `cfg.timeout`).
    pub fn new(cfg: &GroupConfig) -> Result<Self, DistError> {
        cfg.validate()?;
        let c = |s: &str| CString::new(s).map_err(|e| DistError::Config(e.to_string()));
        let host = c(&cfg.host)?;
        let ifname = c(cfg.interface.as_deref().unwrap_or(""))?;
        let mut err: *mut c_char = std::ptr::null_mut();
        // SAFETY: the strings outlive the call; `err` receives an owned message on failure.
        let raw = unsafe {
            qat_dist_group_new(
                host.as_ptr(),
                cfg.port,
                cfg.rank as c_int,
                cfg.world_size as c_int,
                cfg.timeout.as_millis() as i64,
                ifname.as_ptr(),
                &mut err,
            )
        };
        match NonNull::new(raw) {
            Some(raw) => Ok(Self {
                raw,
                rank: cfg.rank,
                world: cfg.world_size,
            }),
            None => Err(DistError::Init {
                rank: cfg.rank,
                world: cfg.world_size,
                host: cfg.host.clone(),
                port: cfg.port,
                message: take_err(err),
            }),
        }
    }

    fn check(&self, op: &'static str, t: &Tensor) -> Result<(), CollectiveError> {
        let bad = |m: &str| {
            Err(CollectiveError {
                op,
                rank: self.rank,
                message: m.into(),
            })
        };
        if !t.defined() {
            return bad("the tensor is undefined");
        }
        if !t.is_contiguous() {
            return bad("the tensor is not contiguous");
        }
        Ok(())
    }

    fn result(&self, op: &'static str, rc: c_int, err: *mut c_char) -> Result<(), CollectiveError> {
        if rc == 0 {
            return Ok(());
        }
        Err(CollectiveError {
            op,
            rank: self.rank,
            message: take_err(err),
        })
    }

    /// Blocks until every rank has reached the barrier.
    pub fn barrier(&self) -> Result<(), CollectiveError> {
        let mut err = std::ptr::null_mut();
        // SAFETY: `raw` is a live group handle.
        let rc = unsafe { qat_dist_barrier(self.raw.as_ptr(), &mut err) };
        self.result("barrier", rc, err)
    }
}

impl Collective for ProcessGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce(&self, t: &Tensor, op: ReduceOp) -> Result<(), CollectiveError> {
        self.check("all_reduce", t)?;
        let code = match op {
            ReduceOp::Sum => 0,
            ReduceOp::Min => 1,
            ReduceOp::Max => 2,
        };
        let mut err = std::ptr::null_mut();
        // SAFETY: `raw` is a live group; `t.as_ptr()` is tch's `at::Tensor*`, valid for the call.
        let rc = unsafe {
            qat_dist_all_reduce(self.raw.as_ptr(), t.as_ptr() as *mut c_void, code, &mut err)
        };
        self.result("all_reduce", rc, err)
    }

    fn broadcast(&self, t: &Tensor, root: usize) -> Result<(), CollectiveError> {
        self.check("broadcast", t)?;
        if root >= self.world {
            return Err(CollectiveError {
                op: "broadcast",
                rank: self.rank,
                message: format!("root {root} is not below the world size {}", self.world),
            });
        }
        let mut err = std::ptr::null_mut();
        // SAFETY: as in `all_reduce`.
        let rc = unsafe {
            qat_dist_broadcast(
                self.raw.as_ptr(),
                t.as_ptr() as *mut c_void,
                root as c_int,
                &mut err,
            )
        };
        self.result("broadcast", rc, err)
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: created by qat_dist_group_new, freed exactly once.
        unsafe { qat_dist_group_free(self.raw.as_ptr()) };
    }
}
