//! The wire: frames, methods, content assembly and reply codes. Pure: no I/O, no broker state.

pub mod content;
pub mod encode;
pub mod erlang;
pub mod error;
pub mod frame;
pub mod method;
pub mod table;

pub use content::{BadProperties, Message, PropertiesInfo};
pub use error::{AmqpError, ChannelError, ConnectionError, Limit, code};
