//! Scenario files: the YAML wire schema, its validation into a [`plan::Plan`], and discovery on disk.

pub mod plan;
