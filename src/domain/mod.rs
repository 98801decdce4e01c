//! The event model. Requests are parsed into these types at the HTTP edge;
//! past that point the code never sees an invalid event.

pub(crate) mod envelope;
mod event;
mod ident;
mod parse;
mod time;

pub use event::{key_text, Event, EventError, InvalidReason, Kind};
pub use ident::Ident;
pub use parse::{
    earliest, parse_event, parse_value, ParseContext, MAX_CLOCK_SKEW, MAX_PROPERTIES_BYTES,
    VAST_ERROR_CODES,
};
