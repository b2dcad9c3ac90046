//! Deterministic archive writers and readers.
