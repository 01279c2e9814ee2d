use std::str::FromStr;
use std::sync::OnceLock;

use ort::environment::{Environment, GlobalThreadPoolOptions};
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};

use super::EngineError;
use crate::tools::{self, Tool};

/// Where blocks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    /// The CUDA execution provider on GPU `N`.
    Cuda(u32),
}

impl FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("unknown device {other:?}: use cpu, cuda or cuda:N")),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// ONNX Runtime's graph optimization level. Honest nodes may run any of them; the judge's
/// tolerance must absorb the differences (`infergrid bench judge` measures them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Optimization {
    Disable,
    Basic,
    Extended,
    #[default]
    All,
}

impl FromStr for Optimization {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disable" => Ok(Self::Disable),
            "basic" => Ok(Self::Basic),
            "extended" => Ok(Self::Extended),
            "all" => Ok(Self::All),
            other => Err(format!(
                "unknown optimization level {other:?}: use disable, basic, extended or all"
            )),
        }
    }
}

impl std::fmt::Display for Optimization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Self::Disable => "disable",
            Self::Basic => "basic",
            Self::Extended => "extended",
            Self::All => "all",
        };
        f.write_str(name)
    }
}

impl From<Optimization> for GraphOptimizationLevel {
    fn from(level: Optimization) -> Self {
        match level {
            Optimization::Disable => GraphOptimizationLevel::Disable,
            Optimization::Basic => GraphOptimizationLevel::Level1,
            Optimization::Extended => GraphOptimizationLevel::Level2,
            Optimization::All => GraphOptimizationLevel::All,
        }
    }
}

/// Facts about the GPU a CUDA runtime uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    pub name: String,
    pub free_bytes: usize,
    pub total_bytes: usize,
}

/// The loaded ONNX Runtime and the device sessions are created for.
#[derive(Debug)]
pub struct Runtime {
    env: Environment,
    device: Device,
    gpu: Option<GpuInfo>,
    fallback: Option<String>,
    optimization: Optimization,
}

/// ONNX Runtime allows one library load and one environment per process; every runtime
/// shares them.
static ORT_ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

impl Runtime {
    /// Loads `libonnxruntime` (from `scripts/setup`'s env file or `ORT_DYLIB_PATH`) and
    /// prepares sessions for `requested`. `intra_threads` sizes the process-wide pool the
    /// first time a runtime is created (default: one thread per core). A CUDA request without a usable GPU falls back to
    /// the CPU; [`Runtime::fallback`] says why.
    pub fn new(requested: Device, intra_threads: Option<usize>) -> Result<Self, EngineError> {
        Self::build(requested, intra_threads, true)
    }

    /// Like [`Runtime::new`], for a process that shares its cores with others (a node among
    /// several on one host): idle pool threads sleep instead of spinning. Measured on 2 cores,
    /// 3 node processes + gateway: 0.24× → 0.60× of in-process decode speed.
    pub fn new_shared_host(
        requested: Device,
        intra_threads: Option<usize>,
    ) -> Result<Self, EngineError> {
        Self::build(requested, intra_threads, false)
    }

    fn build(
        requested: Device,
        intra_threads: Option<usize>,
        spin: bool,
    ) -> Result<Self, EngineError> {
        let library = tools::locate(Tool::OnnxRuntime)
            .map_err(|e| EngineError::MissingRuntime(e.to_string()))?;
        let env = ORT_ENVIRONMENT
            .get_or_init(|| {
                keep_freed_buffers_mapped();
                // One intra-op pool shared by every block's session: with a pool per session,
                // the idle pools of the blocks that just ran spin on the cores the next block
                // needs (measured: 3 blocks ran 3–4× slower than 1 on 2 cores).
                // The library must be loaded before the pool options touch its API.
                let builder = ort::init_from(&library).map_err(|e| e.to_string())?;
                // Spinning idle threads cut latency in a process that owns its cores, and
                // starve other processes (and the network) on shared ones.
                let mut pool = GlobalThreadPoolOptions::default()
                    .with_spin_control(spin)
                    .map_err(|e| e.to_string())?;
                if let Some(threads) = intra_threads {
                    pool = pool.with_intra_threads(threads).map_err(|e| e.to_string())?;
                }
                builder
                    .with_name("infergrid")
                    .with_global_thread_pool(pool)
                    .build()
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(|reason| EngineError::RuntimeLoad { path: library, reason })?;

        let (device, gpu, fallback) = match requested {
            Device::Cpu => (Device::Cpu, None, None),
            Device::Cuda(ordinal) => match probe_gpu(ordinal) {
                Ok(info) => (requested, Some(info), None),
                Err(reason) => (
                    Device::Cpu,
                    None,
                    Some(format!("{requested} requested but {reason}; running on CPU")),
                ),
            },
        };
        Ok(Self { env, device, gpu, fallback, optimization: Optimization::default() })
    }

    /// Sessions created from now on optimize their graphs at `level` (default: all).
    pub fn with_optimization(mut self, level: Optimization) -> Self {
        self.optimization = level;
        self
    }

    /// The device sessions actually run on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The GPU in use, when on CUDA.
    pub fn gpu(&self) -> Option<&GpuInfo> {
        self.gpu.as_ref()
    }

    /// Why a CUDA request runs on the CPU, if it does.
    pub fn fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// A session builder for this device, at this runtime's graph optimization level.
    pub(crate) fn session_builder(&self) -> Result<SessionBuilder, String> {
        let mut builder = ort::session::Session::builder(&self.env)
            .map_err(|e| e.to_string())?
            .with_optimization_level(self.optimization.into())
            .map_err(|e| e.to_string())?;
        if self.device == Device::Cpu {
            // Without the arena, activation buffers go back to the system after each run
            // instead of growing a pool that stays resident next to the weights.
            builder = builder
                .with_execution_providers([ort::ep::CPU::default()
                    .with_arena_allocator(false)
                    .build()])
                .map_err(|e| e.to_string())?;
        }
        if let Device::Cuda(ordinal) = self.device {
            builder = builder
                .with_execution_providers([ort::ep::CUDA::default()
                    .with_device_id(ordinal as i32)
                    .build()
                    .error_on_failure()])
                .map_err(|e| {
                    format!(
                        "CUDA execution provider: {e} (is the onnxruntime-gpu library installed?)"
                    )
                })?;
        }
        Ok(builder)
    }
}

/// Sessions run without ORT's arena (it would keep a pool resident next to the weights), so
/// every step's outputs — KV-cache tensors of 100–200 KB that grow with the sequence, logits
/// of vocabulary size — come from malloc. Above glibc's mmap threshold (128 KB, adjusted
/// upwards only as such blocks are freed) each one is a fresh mapping, page-faulted and zeroed
/// on every step: measured on SmolLM2 split in 3 blocks, 15.7 → 17.0 decode tokens/s. Serving
/// them from the heap instead, up to 8 MiB, and returning a heap's free top to the system only
/// past 64 MiB, keeps that cost out; the price is up to 64 MiB of freed memory kept per malloc
/// arena (measured: resident 0.90× weight bytes after decoding, as before).
fn keep_freed_buffers_mapped() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called once, before the sessions allocate.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

fn probe_gpu(ordinal: u32) -> Result<GpuInfo, String> {
    use cudarc::driver::CudaContext;
    // SAFETY: only tries to dlopen the CUDA driver library; nothing is called through it.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("no CUDA driver library was found".into());
    }
    let count = CudaContext::device_count().map_err(|e| format!("the CUDA driver failed: {e}"))?;
    if ordinal as i32 >= count {
        return Err(format!("there are {count} CUDA devices"));
    }
    let ctx = CudaContext::new(ordinal as usize)
        .map_err(|e| format!("cannot open GPU {ordinal}: {e}"))?;
    let name = ctx.name().map_err(|e| e.to_string())?;
    let (free_bytes, total_bytes) = ctx.mem_get_info().map_err(|e| e.to_string())?;
    Ok(GpuInfo { name, free_bytes, total_bytes })
}
