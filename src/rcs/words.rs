//! The envelope's vocabularies, as the JSON form writes them and as the
//! protobuf form numbers them (0: absent, the default applies).

/// Defines a module for one vocabulary: `WORDS` (each value and its word),
/// `parse` (a word to its number) and `word` (a number to its word; `None`
/// for 0 or a number out of range).
macro_rules! vocabulary {
    ($(#[$doc:meta])* $module:ident: $enum:ident { $($variant:ident => $word:literal),+ $(,)? }) => {
        $(#[$doc])*
        pub mod $module {
            use crate::pb::$enum;

            /// Each value and its word, in the specification's order.
            pub const WORDS: &[($enum, &str)] = &[$(($enum::$variant, $word)),+];

            /// The number of `word`, if it is one of the vocabulary's.
            pub fn parse(word: &str) -> Option<i32> {
                WORDS.iter().find(|(_, w)| *w == word).map(|(v, _)| *v as i32)
            }

            /// The word of `number`; `None` for 0 (absent) or a number
            /// the vocabulary does not have.
            pub fn word(number: i32) -> Option<&'static str> {
                WORDS.iter().find(|(v, _)| *v as i32 == number).map(|(_, w)| *w)
            }
        }
    };
}

vocabulary! {
    /// `message_metadata.priority` (default `normal`).
    priority: Priority {
        Critical => "critical",
        High => "high",
        Normal => "normal",
        Low => "low",
    }
}

vocabulary! {
    /// `message_metadata.delivery_mode` (default `at_least_once`).
    delivery_mode: DeliveryMode {
        AtMostOnce => "at_most_once",
        AtLeastOnce => "at_least_once",
        ExactlyOnce => "exactly_once",
    }
}

vocabulary! {
    /// `security.access_level` (no default).
    access_level: AccessLevel {
        Public => "public",
        Internal => "internal",
        Restricted => "restricted",
        Confidential => "confidential",
    }
}
