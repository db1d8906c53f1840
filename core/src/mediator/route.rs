//! Who may publish and receive what (M5): the `[[permission]]` entries of
//! messages, and the subscriptions a message is routed to.
//!
//! Each grant to receive an event type is a subscription, named
//! `EVENT_TYPE URN`: it exists from the Core's start, and each message of
//! that type published from then on is queued for it (the grant's category
//! and tags permitting), whether or not its module is subscribed at the
//! moment. Default deny: what no entry grants, nobody may.

use std::collections::BTreeMap;

use anima_protocol::Urn;
use anima_protocol::pb::Routing;

use crate::config::MessageGrant;

/// One module's grant to receive one event type.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Receive {
    module: Urn,
    /// `None`: any category.
    category: Option<String>,
    /// Every one of these must be among the message's tags.
    tags: Vec<String>,
}

impl Receive {
    fn accepts(&self, routing: &Routing) -> bool {
        self.category
            .as_ref()
            .is_none_or(|c| c == &routing.event_category)
            && self.tags.iter().all(|t| routing.routing_tags.contains(t))
    }
}

/// The grants of messages.
#[derive(Debug, Default)]
pub(crate) struct Grants {
    /// (module, event type) pairs that may publish.
    publish: Vec<(Urn, String)>,
    /// Event type → the grants to receive it.
    receive: BTreeMap<String, Vec<Receive>>,
}

/// The subscription of `module` to `event_type`: its queue's name.
pub(crate) fn subscription(event_type: &str, module: &Urn) -> String {
    format!("{event_type} {module}")
}

/// The module a subscription belongs to (its URN, as text).
pub(crate) fn module_of(subscription: &str) -> &str {
    subscription
        .split_once(' ')
        .map_or(subscription, |(_, module)| module)
}

impl Grants {
    /// The grants of `messages` (`[[permission]]` entries with `publish` or
    /// `subscribe`), and the `error_handler`'s to receive `EPS_ERROR`.
    pub(crate) fn new(messages: &[MessageGrant], error_handler: Option<&Urn>) -> Self {
        let mut grants = Grants::default();
        if let Some(handler) = error_handler {
            grants
                .receive
                .entry(super::errors::EPS_ERROR.to_owned())
                .or_default()
                .push(Receive {
                    module: handler.clone(),
                    category: None,
                    tags: Vec::new(),
                });
        }
        for m in messages {
            for t in &m.publish {
                grants.publish.push((m.module.clone(), t.clone()));
            }
            for t in &m.subscribe {
                grants.receive.entry(t.clone()).or_default().push(Receive {
                    module: m.module.clone(),
                    category: m.category.clone(),
                    tags: m.tags.clone(),
                });
            }
        }
        grants
    }

    /// Whether `module` may publish `event_type`.
    pub(crate) fn may_publish(&self, module: &Urn, event_type: &str) -> bool {
        self.publish
            .iter()
            .any(|(m, t)| m == module && t == event_type)
    }

    /// Whether some permission names `event_type` (to publish or receive).
    pub(crate) fn names(&self, event_type: &str) -> bool {
        self.receive.contains_key(event_type) || self.publish.iter().any(|(_, t)| t == event_type)
    }

    /// The event types `module` may receive, sorted.
    pub(crate) fn receivable(&self, module: &Urn) -> Vec<&str> {
        self.receive
            .iter()
            .filter(|(_, grants)| grants.iter().any(|g| &g.module == module))
            .map(|(t, _)| t.as_str())
            .collect()
    }

    /// The subscriptions a message with `routing` is queued for: one per
    /// module whose grant to receive its event type accepts its category
    /// and tags.
    pub(crate) fn route(&self, routing: &Routing) -> Vec<String> {
        let mut out: Vec<String> = self
            .receive
            .get(&routing.event_type)
            .into_iter()
            .flatten()
            .filter(|g| g.accepts(routing))
            .map(|g| subscription(&routing.event_type, &g.module))
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urn(name: &str) -> Urn {
        format!("urn:anima:module:{name}").parse().expect("urn")
    }

    fn grant(module: &str, publish: &[&str], subscribe: &[&str]) -> MessageGrant {
        MessageGrant {
            module: urn(module),
            publish: publish.iter().map(|s| (*s).to_owned()).collect(),
            subscribe: subscribe.iter().map(|s| (*s).to_owned()).collect(),
            category: None,
            tags: Vec::new(),
        }
    }

    fn routing(event_type: &str, category: &str, tags: &[&str]) -> Routing {
        Routing {
            event_type: event_type.into(),
            event_category: category.into(),
            routing_tags: tags.iter().map(|s| (*s).to_owned()).collect(),
            ..Routing::default()
        }
    }

    #[test]
    fn m5_publishing_and_receiving_are_granted_per_event_type_default_deny() {
        let grants = Grants::new(
            &[
                grant("app", &["LOG_MESSAGE"], &[]),
                grant("logger", &[], &["LOG_MESSAGE", "ALERT"]),
            ],
            None,
        );
        assert!(grants.may_publish(&urn("app"), "LOG_MESSAGE"));
        assert!(!grants.may_publish(&urn("app"), "ALERT"));
        assert!(!grants.may_publish(&urn("logger"), "LOG_MESSAGE"));
        assert_eq!(grants.receivable(&urn("logger")), ["ALERT", "LOG_MESSAGE"]);
        assert!(grants.receivable(&urn("app")).is_empty());
        assert_eq!(
            grants.route(&routing("LOG_MESSAGE", "", &[])),
            ["LOG_MESSAGE urn:anima:module:logger"]
        );
        assert!(grants.route(&routing("OTHER", "", &[])).is_empty());
    }

    #[test]
    fn m5_category_and_tags_narrow_what_a_grant_receives() {
        let mut security = grant("audit", &[], &["LOG_MESSAGE"]);
        security.category = Some("security".into());
        security.tags = vec!["prod".into(), "eu".into()];
        let grants = Grants::new(&[security, grant("all", &[], &["LOG_MESSAGE"])], None);
        let both = [
            "LOG_MESSAGE urn:anima:module:all",
            "LOG_MESSAGE urn:anima:module:audit",
        ];
        assert_eq!(
            grants.route(&routing("LOG_MESSAGE", "security", &["eu", "x", "prod"])),
            both
        );
        for (category, tags) in [
            ("security", &["prod"][..]),
            ("system", &["prod", "eu"][..]),
            ("", &[][..]),
        ] {
            assert_eq!(
                grants.route(&routing("LOG_MESSAGE", category, tags)),
                ["LOG_MESSAGE urn:anima:module:all"],
                "{category} {tags:?}"
            );
        }
    }

    #[test]
    fn m5_two_grants_of_one_module_queue_a_message_once() {
        let mut narrow = grant("logger", &[], &["LOG_MESSAGE"]);
        narrow.category = Some("security".into());
        let grants = Grants::new(&[narrow, grant("logger", &[], &["LOG_MESSAGE"])], None);
        assert_eq!(
            grants.route(&routing("LOG_MESSAGE", "security", &[])),
            ["LOG_MESSAGE urn:anima:module:logger"]
        );
    }
}
