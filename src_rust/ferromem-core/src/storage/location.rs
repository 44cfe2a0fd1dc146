//! Where a store lives, parsed once from a URL or a path, and the one factory that opens
//! the backend for it. Adding a backend means a [`Location`] variant, its arm in
//! [`Location::parse`] and in [`open`], and a type implementing [`Storage`].
//!
//! | text                            | location                                  |
//! |---------------------------------|-------------------------------------------|
//! | `memory:`                       | in memory, nothing persisted              |
//! | `sqlite:PATH`, `sqlite:///abs`  | the SQLite file at PATH (or /abs)         |
//! | `postgresql://...`, `postgres://` | a store in a PostgreSQL database (see [`super::postgres`]) |
//! | anything else                   | a path of a SQLite file (the default)     |
//!
//! Schemes are matched without regard to case. Text whose prefix is not a known scheme is
//! a path, so `notes:v2.db` stays a file name; only an unknown `scheme://` is refused, as
//! it cannot be meant as a file name.

use super::memory::MemoryStorage;
use super::postgres::PostgresStorage;
use super::sqlite::SqliteStorage;
use super::{Durability, Storage};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// Where a store lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// In memory: nothing persisted, nothing shared.
    Memory,
    /// One SQLite file.
    Sqlite(PathBuf),
    /// A store in a PostgreSQL database (the URL as given; it may hold a password, so it is
    /// never shown: see [`super::postgres::PgLocation`]).
    Postgres(String),
}

/// Whether the store is opened for writing. Read-only opens never write to the store (nor
/// create one), so commands that only look (`ferromem stats`, `ferromem check`) use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    ReadOnly,
}

/// How the factory opens one connection to a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StorageOptions {
    pub durability: Durability,
    pub access: Access,
    /// This connection serves point reads of exact vectors ([`super::VectorsAt`]) on the
    /// search path: a backend may prepare for them (SQLite maps its pages).
    pub point_reads: bool,
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions { durability: Durability::Normal, access: Access::ReadWrite, point_reads: false }
    }
}

const SCHEMES: &str = "a path, 'sqlite:PATH', 'sqlite:///ABSOLUTE/PATH', 'memory:' or 'postgresql://...'";

impl Location {
    /// Parses a location (see the module's table).
    pub fn parse(text: &str) -> Result<Location> {
        let Some((scheme, rest)) = split_scheme(text) else {
            return Ok(Location::Sqlite(PathBuf::from(text)));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "memory" => match rest {
                "" | "//" => Ok(Location::Memory),
                _ => Err(Error::InvalidInput(format!(
                    "the location '{text}' has text after 'memory:'; an in-memory store is just 'memory:'"
                ))),
            },
            "sqlite" => {
                // `sqlite:///abs/path` is the URL form (an empty host); `sqlite:PATH` the short one.
                let path = match rest.strip_prefix("//") {
                    Some(after) if after.is_empty() || after.starts_with('/') => after,
                    Some(_) => {
                        return Err(Error::InvalidInput(format!(
                            "the location '{text}' names a host; a SQLite store is a local file: 'sqlite:PATH' or 'sqlite:///ABSOLUTE/PATH'"
                        )))
                    }
                    None => rest,
                };
                if path.is_empty() {
                    return Err(Error::InvalidInput(format!(
                        "the location '{text}' names no file: 'sqlite:PATH' or 'sqlite:///ABSOLUTE/PATH'"
                    )));
                }
                Ok(Location::Sqlite(PathBuf::from(path)))
            }
            "postgresql" | "postgres" => Ok(Location::Postgres(text.to_string())),
            _ if rest.starts_with("//") => {
                Err(Error::Unsupported(format!("unknown store location scheme '{scheme}': a store location is {SCHEMES}")))
            }
            _ => Ok(Location::Sqlite(PathBuf::from(text))),
        }
    }

    /// The location of an optional path: None is in memory.
    pub fn from_path(path: Option<&Path>) -> Location {
        path.map_or(Location::Memory, |p| Location::Sqlite(p.to_path_buf()))
    }

    /// The store's file, for a location that is one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Location::Sqlite(p) => Some(p),
            Location::Memory | Location::Postgres(_) => None,
        }
    }
}

/// `scheme` and the text after its colon, when `text` starts with one: a letter then
/// letters, digits, `+`, `-` or `.` (RFC 3986). One letter is a Windows drive (`C:\x`),
/// not a scheme.
fn split_scheme(text: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = text.split_once(':')?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    let well_formed = first.is_ascii_alphabetic() && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    (well_formed && scheme.len() > 1).then_some((scheme, rest))
}

/// Opens one connection to the store at `location`: the one place a backend is chosen.
pub fn open(location: &Location, options: StorageOptions) -> Result<Box<dyn Storage>> {
    match location {
        Location::Memory => Ok(Box::new(MemoryStorage)),
        Location::Sqlite(path) => {
            let mut storage = SqliteStorage::open_as(path, options.durability, options.access)?;
            if options.point_reads {
                storage.map_reads()?;
            }
            Ok(Box::new(storage))
        }
        Location::Postgres(url) => Ok(Box::new(PostgresStorage::open(url, options.access, options.durability)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(p: &str) -> Location {
        Location::Sqlite(PathBuf::from(p))
    }

    #[test]
    fn parses_each_form() {
        assert_eq!(Location::parse("memory:").unwrap(), Location::Memory);
        assert_eq!(Location::parse("MEMORY:").unwrap(), Location::Memory);
        assert_eq!(Location::parse("sqlite:/x/y.db").unwrap(), sqlite("/x/y.db"));
        assert_eq!(Location::parse("sqlite:rel/y.db").unwrap(), sqlite("rel/y.db"));
        assert_eq!(Location::parse("sqlite:///abs/y.db").unwrap(), sqlite("/abs/y.db"));
        assert_eq!(Location::parse("/x/y.db").unwrap(), sqlite("/x/y.db"));
        assert_eq!(Location::parse("y.db").unwrap(), sqlite("y.db"));
        assert_eq!(Location::parse("notes:v2.db").unwrap(), sqlite("notes:v2.db"));
        assert_eq!(Location::parse(r"C:\x\y.db").unwrap(), sqlite(r"C:\x\y.db"));
        assert!(matches!(Location::parse("postgresql://u:p@h/db").unwrap(), Location::Postgres(_)));
        assert!(matches!(Location::parse("postgres://h/db").unwrap(), Location::Postgres(_)));
    }

    #[test]
    fn refuses_what_is_no_location() {
        assert!(matches!(Location::parse("mysql://h/db"), Err(Error::Unsupported(_))));
        for bad in ["sqlite:", "sqlite://host/x.db", "memory:x"] {
            assert!(matches!(Location::parse(bad), Err(Error::InvalidInput(_))), "{bad}");
        }
    }
}
