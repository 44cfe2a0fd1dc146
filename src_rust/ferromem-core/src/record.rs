//! A stored record (everything but its vector, which lives in the arena).

use std::sync::Arc;

#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub id: Arc<str>,
    pub content: String,
    pub scope: String,
    pub categories: Vec<String>,
    /// The metadata as a JSON object text, exactly as given (kept verbatim for round-trips).
    pub metadata_json: String,
    pub importance: f64,
    pub created_at: f64,
    pub last_accessed: f64,
    pub source: Option<String>,
    pub private: bool,
}

/// Parses a metadata text and returns its top-level scalar entries for the equality index.
/// Errors when the text is not a JSON object.
pub fn metadata_scalars(json: &str) -> crate::Result<Vec<(String, crate::filter::Scalar)>> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| crate::Error::InvalidMetadata(format!("metadata is not valid JSON: {e}")))?;
    let obj = value.as_object().ok_or_else(|| crate::Error::InvalidMetadata("metadata must be a JSON object (a dict)".into()))?;
    Ok(obj.iter().filter_map(|(k, v)| crate::filter::Scalar::from_json(v).map(|s| (k.clone(), s))).collect())
}
