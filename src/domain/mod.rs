//! The event model. Requests are parsed into these types at the HTTP edge;
//! past that point the code never sees an invalid event.

mod event;
mod ident;

pub use event::{
    parse_event, parse_value, Event, EventError, Kind, ParseContext, MAX_CLOCK_SKEW,
    MAX_PROPERTIES_BYTES,
};
pub use ident::Ident;
