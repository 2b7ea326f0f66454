//! Updates on disk and file mode: reading and writing `.npy` / `.safetensors` tensors
//! ([`tensor`]), the signed masked-file format ([`masked`]), the node's masking job
//! ([`job`]) and the researcher's aggregation of masked files ([`aggregate`]).

pub mod aggregate;
pub mod job;
pub mod masked;
pub mod npy;
pub mod tensor;
pub mod tensor_error;
