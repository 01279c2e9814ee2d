use std::ffi::CString;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;
use ort::AsPointer;
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::builder::SessionBuilder;
use ort::value::{Shape, TensorRefMut};

use super::EngineError;
use crate::model::{BlockSpec, TensorLocation};

/// A block's weights file, memory-mapped, with one ORT tensor viewing each weight in place.
///
/// The tensors are handed to ORT as external initializers, so ORT never reads the file
/// itself and the weights exist once in memory: as the mapped file's pages.
pub(crate) struct MappedWeights {
    // Declared before `map`: the views must be dropped before the memory they point into.
    views: Vec<(CString, TensorRefMut<'static, f32>)>,
    map: Arc<Mmap>,
}

impl std::fmt::Debug for MappedWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedWeights")
            .field("bytes", &self.map.len())
            .field("tensors", &self.views.len())
            .finish()
    }
}

// SAFETY: the views only point into the read-only mapping owned by `self`; ORT reads them
// from any thread and never writes to initializers.
unsafe impl Send for MappedWeights {}
unsafe impl Sync for MappedWeights {}

impl MappedWeights {
    /// Maps `path` and creates a view for every tensor of `block`.
    pub(crate) fn map(path: &Path, block: &BlockSpec) -> Result<Self, EngineError> {
        let file = std::fs::File::open(path)
            .map_err(|source| EngineError::MapWeights { path: path.into(), source })?;
        let actual = file
            .metadata()
            .map_err(|source| EngineError::MapWeights { path: path.into(), source })?
            .len();
        if actual != block.weight_bytes {
            return Err(EngineError::WeightsSize {
                path: path.into(),
                expected: block.weight_bytes,
                actual,
            });
        }
        // SAFETY: the file is opened read-only; a concurrent writer is a corrupt model, which
        // `model verify` detects.
        let map = Arc::new(
            unsafe { Mmap::map(&file) }
                .map_err(|source| EngineError::MapWeights { path: path.into(), source })?,
        );
        let info =
            MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, MemoryType::Default)
                .map_err(|e| EngineError::load(path, e))?;
        let views = block
            .tensors
            .iter()
            .map(|t| {
                view(&map, t, &info)
                    .map_err(|e| EngineError::load(path, format!("tensor {}: {e}", t.name)))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { views, map })
    }

    /// Registers every weight with `builder` as an external initializer.
    pub(crate) fn register(&self, builder: &mut SessionBuilder) -> Result<(), String> {
        let names: Vec<*const std::ffi::c_char> =
            self.views.iter().map(|(n, _)| n.as_ptr()).collect();
        let values: Vec<*const ort::sys::OrtValue> =
            self.views.iter().map(|(_, v)| v.ptr()).collect();
        let api = ort::api();
        // SAFETY: the names and values outlive the call, and the values (and the mapping they
        // view) outlive every session built from `builder`, because the block owns both.
        let status = unsafe {
            (api.AddExternalInitializers)(
                builder.ptr_mut(),
                names.as_ptr(),
                values.as_ptr(),
                values.len(),
            )
        };
        status_to_result(status)
    }

    /// Bytes mapped.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

fn view(
    map: &Mmap,
    t: &TensorLocation,
    info: &MemoryInfo,
) -> Result<(CString, TensorRefMut<'static, f32>), String> {
    let bytes = map.get(t.offset..t.offset + t.length).ok_or("outside the weights file")?;
    if bytes.as_ptr().align_offset(std::mem::align_of::<f32>()) != 0 {
        return Err("misaligned".into());
    }
    let shape = Shape::new(t.shape.iter().map(|&d| d as i64));
    // SAFETY: `bytes` is a float32 tensor of `shape` inside the mapping, which outlives the view
    // (see `MappedWeights`); ORT treats initializers as read-only.
    let value = unsafe {
        TensorRefMut::<f32>::from_raw(info.clone(), bytes.as_ptr() as *mut std::ffi::c_void, shape)
    }
    .map_err(|e| e.to_string())?;
    let name = CString::new(t.name.as_str()).map_err(|_| "name contains NUL")?;
    Ok((name, value))
}

fn status_to_result(status: ort::sys::OrtStatusPtr) -> Result<(), String> {
    let api = ort::api();
    let ptr = status.0;
    if ptr.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null status carries a NUL-terminated message until released.
    let message = unsafe { std::ffi::CStr::from_ptr((api.GetErrorMessage)(ptr)) }
        .to_string_lossy()
        .into_owned();
    unsafe { (api.ReleaseStatus)(ptr) };
    Err(message)
}
