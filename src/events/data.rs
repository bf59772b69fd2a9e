//! [`Data`]: the message's payload, typed.

use std::future::{Future, ready};

use serde::de::DeserializeOwned;

use super::FromIncoming;
use crate::handler::{HandlerError, Incoming};

/// The code of the error acknowledgement for a payload that is not what the handler takes.
pub const INVALID_DATA: &str = "invalid_data";

/// The message's payload, deserialized into `T` (any `serde::Deserialize` type).
///
/// A payload that does not fit is refused before the handler runs, with the error
/// acknowledgement `invalid_data` whose message names the field and what is wrong with it:
/// `` invalid data at `to.name`: invalid type: integer `3`, expected a string ``. A payload the
/// client left out is `null`: take an `Option<T>` or a `#[serde(default)]` type to allow it.
///
/// ```
/// use serde::Deserialize;
/// use simpleio::events::{Data, Events};
///
/// #[derive(Deserialize)]
/// struct Chat {
///     text: String,
///     #[serde(default)]
///     room: Option<String>,
/// }
///
/// async fn chat(Data(chat): Data<Chat>) -> String {
///     format!("{} to {}", chat.text, chat.room.as_deref().unwrap_or("everyone"))
/// }
///
/// let events: Events = Events::new().on("chat", chat);
/// # let _ = events;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Data<T>(pub T);

impl<S, T> FromIncoming<S> for Data<T>
where
    S: Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = HandlerError;

    fn from_incoming(
        msg: &Incoming,
        _: &S,
    ) -> impl Future<Output = Result<Self, HandlerError>> + Send {
        ready(parse(msg.data.get()).map(Data))
    }
}

/// Deserializes `json`, or says where and why it does not fit.
fn parse<T: DeserializeOwned>(json: &str) -> Result<T, HandlerError> {
    let mut deserializer = serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let why = without_position(e.inner().to_string());
        // The root (".") is the payload itself: naming it adds nothing.
        let message = if path == "." {
            format!("invalid data: {why}")
        } else {
            format!("invalid data at `{path}`: {why}")
        };
        HandlerError::new(INVALID_DATA, message)
    })
}

/// serde_json ends its messages with " at line L column C": about the payload's own text, which
/// the client did not write by hand, so the path says it better.
fn without_position(mut message: String) -> String {
    if let Some(at) = message.rfind(" at line ") {
        let tail = &message[at + " at line ".len()..];
        let is_position = tail.split_once(" column ").is_some_and(|(line, column)| {
            !line.is_empty()
                && !column.is_empty()
                && line.bytes().all(|b| b.is_ascii_digit())
                && column.bytes().all(|b| b.is_ascii_digit())
        });
        if is_position {
            message.truncate(at);
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Chat {
        text: String,
        to: Option<Recipient>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Recipient {
        name: String,
    }

    #[test]
    fn a_wrong_type_names_its_nested_field() {
        let e = parse::<Chat>(r#"{"text": "hi", "to": {"name": 3}}"#).unwrap_err();
        assert_eq!(e.code, INVALID_DATA);
        assert_eq!(
            e.message,
            "invalid data at `to.name`: invalid type: integer `3`, expected a string"
        );
    }

    #[test]
    fn a_missing_field_is_named_with_no_position() {
        let e = parse::<Chat>(r#"{"to": null}"#).unwrap_err();
        assert_eq!(e.message, "invalid data: missing field `text`");
    }

    #[test]
    fn an_element_of_a_list_is_named_by_its_index() {
        let e = parse::<Vec<u8>>("[1, 2, 300]").unwrap_err();
        assert!(
            e.message.starts_with("invalid data at `[2]`: "),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_fitting_payload_parses() {
        let chat = parse::<Chat>(r#"{"text": "hi"}"#).expect("fits");
        assert_eq!(chat.text, "hi");
    }

    #[test]
    fn only_a_trailing_position_is_cut() {
        assert_eq!(without_position("bad at line 1 column 9".into()), "bad");
        assert_eq!(
            without_position("at line of fire".into()),
            "at line of fire"
        );
    }
}
