use std::str::FromStr;
use std::sync::OnceLock;

use ort::environment::Environment;
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
    intra_threads: Option<usize>,
}

/// ONNX Runtime allows one library load and one environment per process; every runtime
/// shares them.
static ORT_ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

impl Runtime {
    /// Loads `libonnxruntime` (from `scripts/setup`'s env file or `ORT_DYLIB_PATH`) and
    /// prepares sessions for `requested`. A CUDA request without a usable GPU falls back to
    /// the CPU; [`Runtime::fallback`] says why.
    pub fn new(requested: Device, intra_threads: Option<usize>) -> Result<Self, EngineError> {
        let library = tools::locate(Tool::OnnxRuntime)
            .map_err(|e| EngineError::MissingRuntime(e.to_string()))?;
        let env = ORT_ENVIRONMENT
            .get_or_init(|| {
                ort::init_from(&library)
                    .map_err(|e| e.to_string())?
                    .with_name("infergrid")
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
        Ok(Self { env, device, gpu, fallback, intra_threads })
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

    /// A session builder for this device: full graph optimization, and no weight prepacking,
    /// which would copy every memory-mapped weight into a second buffer.
    pub(crate) fn session_builder(&self) -> Result<SessionBuilder, String> {
        let mut builder = ort::session::Session::builder(&self.env)
            .map_err(|e| e.to_string())?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| e.to_string())?
            .with_prepacking(false)
            .map_err(|e| e.to_string())?;
        if let Some(threads) = self.intra_threads {
            builder = builder.with_intra_threads(threads).map_err(|e| e.to_string())?;
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
