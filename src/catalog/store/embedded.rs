//! The catalogue in a redb file (see the parent module).

/// The catalogue in `catalog.redb`.
pub struct EmbeddedCatalog;
