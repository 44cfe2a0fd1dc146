//! Filters: what a search, count, list or delete is restricted to. Every criterion given
//! must hold (AND). The candidate set is built from the indexes before anything is scored.

/// A scalar metadata value, as the equality index keys it. Numbers compare numerically
/// (1 == 1.0); booleans are not numbers; `Null` matches only a stored JSON null.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scalar {
    Null,
    Bool(bool),
    /// f64 bits, with -0.0 folded into 0.0 so that equal numbers hash equally.
    Num(u64),
    Str(String),
}

impl Scalar {
    pub fn num(x: f64) -> Scalar {
        let x = if x == 0.0 { 0.0 } else { x };
        Scalar::Num(x.to_bits())
    }

    pub fn from_json(v: &serde_json::Value) -> Option<Scalar> {
        use serde_json::Value;
        match v {
            Value::Null => Some(Scalar::Null),
            Value::Bool(b) => Some(Scalar::Bool(*b)),
            Value::Number(n) => n.as_f64().map(Scalar::num),
            Value::String(s) => Some(Scalar::Str(s.clone())),
            Value::Array(_) | Value::Object(_) => None,
        }
    }
}

/// Which private records a query may see.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Privacy {
    /// Private records are included (the default).
    #[default]
    Include,
    /// Private records are left out, except those whose source equals the given one.
    VisibleTo(Option<String>),
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    pub scope: Option<String>,
    pub categories: Option<Vec<String>>,
    pub where_eq: Vec<(String, Scalar)>,
    pub source: Option<String>,
    pub privacy: Privacy,
    pub older_than: Option<f64>,
    pub ids: Option<Vec<String>>,
}

impl Filter {
    /// True when the filter restricts nothing.
    pub fn is_empty(&self) -> bool {
        self.effective_scope().is_none()
            && self.categories.is_none()
            && self.where_eq.is_empty()
            && self.source.is_none()
            && self.privacy == Privacy::Include
            && self.older_than.is_none()
            && self.ids.is_none()
    }

    /// True when ids are the only criterion.
    pub fn only_ids(&self) -> bool {
        self.ids.is_some() && Filter { ids: None, ..self.clone() }.is_empty()
    }

    /// The scope prefix that actually restricts (None, "" and "/" match everything).
    pub fn effective_scope(&self) -> Option<&str> {
        match self.scope.as_deref() {
            None | Some("") | Some("/") => None,
            Some(s) => Some(s),
        }
    }
}

/// The scope rule of the contract: `prefix` matches `scope` when they are equal, or when
/// `scope` starts with `prefix` and either the next character is `/` or the prefix's last
/// character is not alphanumeric. So `/a` matches `/a/x` but never `/ab`.
pub fn scope_matches(prefix: &str, scope: &str) -> bool {
    if prefix.is_empty() || prefix == "/" {
        return true;
    }
    if !scope.starts_with(prefix) {
        return false;
    }
    if scope.len() == prefix.len() {
        return true;
    }
    if scope.as_bytes()[prefix.len()] == b'/' {
        return true;
    }
    match prefix.chars().next_back() {
        Some(c) => !c.is_alphanumeric(),
        None => true,
    }
}

/// The direct child of `parent` on the way to `scope`, if `scope` lies strictly below it.
/// `child_of("/a", "/a/b/c") == Some("/a/b")`.
pub fn child_of<'a>(parent: &str, scope: &'a str) -> Option<&'a str> {
    let parent = parent.trim_end_matches('/');
    let rest = if parent.is_empty() { scope.strip_prefix('/')? } else { scope.strip_prefix(parent)?.strip_prefix('/')? };
    if rest.is_empty() {
        return None;
    }
    let end = rest.find('/').unwrap_or(rest.len());
    let child_len = scope.len() - rest.len() + end;
    Some(&scope[..child_len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_boundaries() {
        assert!(scope_matches("/a", "/a"));
        assert!(scope_matches("/a", "/a/x"));
        assert!(scope_matches("/a", "/a/x/y"));
        assert!(!scope_matches("/a", "/ab"));
        assert!(!scope_matches("/a", "/b"));
        assert!(scope_matches("/share\\", "/share\\docs"));
        assert!(scope_matches("/a/", "/a/x"));
        assert!(scope_matches("/", "/anything"));
        assert!(scope_matches("/é", "/é/x"));
        assert!(!scope_matches("/é", "/éa"));
        assert!(scope_matches("/a-", "/a-b"));
        assert!(!scope_matches("/a%", "/ab"));
        assert!(!scope_matches("/a_", "/ab"));
    }

    #[test]
    fn children() {
        assert_eq!(child_of("/a", "/a/b/c"), Some("/a/b"));
        assert_eq!(child_of("/a", "/a"), None);
        assert_eq!(child_of("/a", "/ab/c"), None);
        assert_eq!(child_of("/", "/a/b"), Some("/a"));
        assert_eq!(child_of("/", "/"), None);
    }

    #[test]
    fn scalars() {
        assert_eq!(Scalar::num(1.0), Scalar::num(1.0));
        assert_eq!(Scalar::num(-0.0), Scalar::num(0.0));
        assert_ne!(Scalar::Bool(true), Scalar::num(1.0));
        let v: serde_json::Value = serde_json::from_str("1").unwrap();
        assert_eq!(Scalar::from_json(&v), Some(Scalar::num(1.0)));
    }
}
