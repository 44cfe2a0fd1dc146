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

impl Record {
    /// A record with an id and a scope and nothing else: empty content, no categories,
    /// `{}` metadata, importance 0.5, times 0, no source, not private. For synthetic rows
    /// (the planner's calibration) and tests.
    pub fn bare(id: impl Into<Arc<str>>, scope: impl Into<String>) -> Record {
        Record {
            id: id.into(),
            content: String::new(),
            scope: scope.into(),
            categories: Vec::new(),
            metadata_json: "{}".into(),
            importance: 0.5,
            created_at: 0.0,
            last_accessed: 0.0,
            source: None,
            private: false,
        }
    }
}

/// Parses a metadata text and returns its top-level scalar entries for the equality index.
/// Errors when the text is not a JSON object.
pub fn metadata_scalars(json: &str) -> crate::Result<Vec<(String, crate::filter::Scalar)>> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| crate::Error::InvalidMetadata(format!("metadata is not valid JSON: {e}")))?;
    let obj = value.as_object().ok_or_else(|| crate::Error::InvalidMetadata("metadata must be a JSON object (a dict)".into()))?;
    Ok(obj.iter().filter_map(|(k, v)| crate::filter::Scalar::from_json(v).map(|s| (k.clone(), s))).collect())
}
