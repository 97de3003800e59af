//! The forwarder's header rules as a library, so that the fuzz targets (`fuzz/` at the repository's
//! root) reach them. The binary, `main.rs`, holds everything else and uses these from here.

pub mod headers;

#[doc(hidden)]
pub mod fuzzing;
