//! A Python device (`ferromem.gpu.DeviceSearch`: CuPy on a GPU, NumPy in tests) as the
//! core's [`CandidateDevice`]. The engine calls it with the GIL released and the state's
//! read lock held; it takes the GIL for each call. That cannot deadlock: every binding
//! method releases the GIL before it takes an engine lock (`native`), so no thread holds
//! the GIL while it waits for the state.

use ferromem_core::device::{CandidateDevice, MirrorUpdate};
use ferromem_core::vectors::SlotHits;
use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use std::collections::HashMap;
use std::sync::Mutex;

/// A slot the device pads its answer with when fewer rows exist.
const NO_SLOT: u32 = u32::MAX;

pub struct PyDevice {
    device: Py<PyAny>,
    name: String,
    /// `error_bound(dim)` per dimension (asked once: it is a formula of the device's).
    bounds: Mutex<HashMap<usize, f32>>,
}

impl PyDevice {
    pub fn new(device: &Bound<'_, PyAny>) -> PyResult<PyDevice> {
        let name: String = device.getattr("name")?.extract()?;
        for method in ["apply", "top_candidates", "error_bound"] {
            if !device.hasattr(method)? {
                return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                    "a device needs a {method}() method (see ferromem.gpu.DeviceSearch)"
                )));
            }
        }
        Ok(PyDevice { device: device.clone().unbind(), name, bounds: Mutex::new(HashMap::new()) })
    }
}

/// A Python exception as the device's words: "DeviceMemoryError: needs 6.1 GiB, ...".
fn words(py: Python<'_>, e: PyErr) -> String {
    let kind = e.get_type(py).name().map(|n| n.to_string()).unwrap_or_else(|_| "error".into());
    format!("{kind}: {}", e.value(py))
}

impl CandidateDevice for PyDevice {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn error_bound(&self, dim: usize) -> f32 {
        if let Some(&b) = self.bounds.lock().unwrap_or_else(|p| p.into_inner()).get(&dim) {
            return b;
        }
        let bound = Python::attach(|py| self.device.bind(py).call_method1("error_bound", (dim,)).and_then(|b| b.extract::<f32>()));
        // A device that cannot state its bound gets one no proof passes: every query is
        // then answered by the CPU scan (correct, and visible as fallbacks).
        let bound = match bound {
            Ok(b) if b.is_finite() && b >= 0.0 => b,
            _ => f32::INFINITY,
        };
        self.bounds.lock().unwrap_or_else(|p| p.into_inner()).insert(dim, bound);
        bound
    }

    fn apply(&self, u: &MirrorUpdate<'_>) -> Result<(), String> {
        Python::attach(|py| {
            let written = PyArray1::from_slice(py, u.written);
            let rows = PyArray1::from_slice(py, u.rows).reshape([u.written.len(), u.dim]).map_err(|e| words(py, e))?;
            let freed = PyArray1::from_slice(py, u.freed);
            self.device
                .bind(py)
                .call_method1("apply", (u.dim, u.slot_count, written, rows, freed, u.reset))
                .map(|_| ())
                .map_err(|e| words(py, e))
        })
    }

    fn propose(&self, queries: &[f32], nq: usize, dim: usize, width: usize, candidates: Option<&[u32]>) -> Result<SlotHits, String> {
        Python::attach(|py| {
            let run = || -> PyResult<SlotHits> {
                let q = PyArray1::from_slice(py, queries).reshape([nq, dim])?;
                let c = candidates.map(|c| PyArray1::from_slice(py, c));
                let answer = self.device.bind(py).call_method1("top_candidates", (q, width, c))?;
                let (slots, scores): (PyReadonlyArray2<'_, u32>, PyReadonlyArray2<'_, f32>) = answer.extract()?;
                if slots.shape() != [nq, width] || scores.shape() != [nq, width] {
                    return Err(pyo3::exceptions::PyValueError::new_err(format!(
                        "top_candidates returned shapes {:?} and {:?}, expected ({nq}, {width})",
                        slots.shape(),
                        scores.shape()
                    )));
                }
                let (slots, scores) = (slots.as_array(), scores.as_array());
                Ok((0..nq)
                    .map(|i| {
                        slots
                            .row(i)
                            .iter()
                            .zip(scores.row(i).iter())
                            .filter(|(&s, _)| s != NO_SLOT)
                            .map(|(&s, &score)| (score, s))
                            .collect()
                    })
                    .collect())
            };
            run().map_err(|e| words(py, e))
        })
    }
}
