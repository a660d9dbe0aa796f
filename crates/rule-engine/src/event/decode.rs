//! Format dispatch (to be written).
use super::{Event, Rejection};

pub const DEFAULT_MAX_EVENT_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Native,
    Segment,
    Sensors,
}

#[derive(Debug, Clone)]
pub struct DecodeOptions {
    pub format: Format,
    pub max_event_bytes: usize,
}

pub fn decode(_raw: &[u8], _opts: &DecodeOptions) -> Result<Event, Rejection> {
    unimplemented!()
}
