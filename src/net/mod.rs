//! The network: versioned, size-bounded frames ([`frame`]), mutual TLS pinned to the
//! registry ([`tls`]), and framed channels with deadlines ([`channel`]).

pub mod channel;
pub mod error;
pub mod frame;
pub mod tls;
