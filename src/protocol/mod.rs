//! The wire vocabulary.
