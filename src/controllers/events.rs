//! Kubernetes Events of the controllers, with repeats counted on one Event (its `series`), as
//! `kubectl describe` shows them and as kube-runtime's recorder does, at a fraction of its
//! memory: that recorder keeps a full copy of every Event it published in the last six minutes
//! and scans all of them on every publish. With thousands of workloads, each point's Event has
//! a note of its own, so nearly every copy is never repeated: at N = 1,000 the copies were a
//! sixth of the operator's heap. This one keeps, per Event it may still repeat, a 64-bit key,
//! the Event's name, its count and when it was last seen, and forgets the oldest in order.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};

/// How long a published Event may be repeated onto (kube-runtime's recorder and client-go use
/// the same window).
const REPEAT_WINDOW: SignedDuration = SignedDuration::from_mins(6);

/// At most this many Events are remembered for repeats; past it the oldest is forgotten (its
/// next repeat is a new Event, which is all that is lost).
const REMEMBERED: usize = 16_384;

/// Who publishes: the controller's name and this replica's identity.
#[derive(Clone, Debug)]
pub struct Reporter {
    pub controller: String,
    pub instance: String,
}

/// One Event to publish about an object.
pub struct Published<'a> {
    pub warning: bool,
    pub reason: &'a str,
    pub action: &'a str,
    pub note: &'a str,
}

struct Remembered {
    name: String,
    count: i32,
    last: Timestamp,
}

#[derive(Default)]
struct Memory {
    events: HashMap<u64, Remembered>,
    /// Keys in the order they were last seen (a key seen again is pushed again; an entry whose
    /// time is older than its Event's `last` is stale and skipped).
    order: VecDeque<(Timestamp, u64)>,
}

impl Memory {
    /// Forgets what is past the repeat window, and the oldest beyond [`REMEMBERED`].
    fn forget(&mut self, now: Timestamp) {
        while let Some(&(seen, key)) = self.order.front() {
            let current = self.events.get(&key).map(|e| e.last);
            let stale = current != Some(seen);
            let expired = seen + REPEAT_WINDOW <= now;
            if !stale && !expired && self.events.len() <= REMEMBERED {
                break;
            }
            self.order.pop_front();
            if !stale {
                self.events.remove(&key);
            }
        }
    }
}

/// Publishes Events; shared by every reconcile through the `Context`.
pub struct Recorder {
    client: Client,
    reporter: Reporter,
    memory: Mutex<Memory>,
}

impl Recorder {
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter,
            memory: Mutex::default(),
        }
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many Events are remembered for repeats now.
    pub fn remembered(&self) -> usize {
        self.memory().events.len()
    }

    /// Publishes `event` about `regarding`: a new Event, or, when the same one (same object,
    /// type, reason, action and note) was published within the repeat window, a repeat counted
    /// on that Event's series.
    pub async fn publish(
        &self,
        event: &Published<'_>,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = key_of(event, regarding);
        let ns = regarding.namespace.as_deref().unwrap_or("default");
        let events: Api<Event> = Api::namespaced(self.client.clone(), ns);
        let repeat = {
            let mut memory = self.memory();
            memory.forget(now);
            memory
                .events
                .get(&key)
                .map(|e| (e.name.clone(), e.count + 1))
        };
        if let Some((name, count)) = repeat {
            let series = serde_json::json!({"series": EventSeries {
                count,
                last_observed_time: MicroTime(now),
            }});
            match events
                .patch(&name, &PatchParams::default(), &Patch::Merge(&series))
                .await
            {
                Ok(_) => {
                    self.remember(key, name, count, now);
                    return Ok(());
                }
                // Gone (its time to live on the server passed, or it was deleted): a new one.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let created = events
            .create(
                &PostParams::default(),
                &self.new_event(event, regarding, now),
            )
            .await?;
        if let Some(name) = created.metadata.name {
            self.remember(key, name, 1, now);
        }
        Ok(())
    }

    fn remember(&self, key: u64, name: String, count: i32, now: Timestamp) {
        let mut memory = self.memory();
        memory.events.insert(
            key,
            Remembered {
                name,
                count,
                last: now,
            },
        );
        memory.order.push_back((now, key));
        memory.forget(now);
    }

    fn new_event(&self, e: &Published<'_>, regarding: &ObjectReference, now: Timestamp) -> Event {
        let about = regarding
            .name
            .as_deref()
            .unwrap_or(&self.reporter.controller);
        Event {
            metadata: ObjectMeta {
                // The name Kubernetes' own recorders give: the object's, then the time in hex.
                name: Some(format!("{about}.{:x}", now.as_nanosecond())),
                namespace: regarding.namespace.clone(),
                ..Default::default()
            },
            action: Some(e.action.to_string()),
            reason: Some(e.reason.to_string()),
            note: Some(e.note.to_string()),
            type_: Some(if e.warning { "Warning" } else { "Normal" }.into()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(self.reporter.instance.clone()),
            ..Default::default()
        }
    }
}

/// What makes two Events the same one, hashed: the object (its identity), type, reason,
/// action and note.
fn key_of(e: &Published<'_>, r: &ObjectReference) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    (
        &r.api_version,
        &r.kind,
        &r.namespace,
        &r.name,
        &r.uid,
        &r.field_path,
    )
        .hash(&mut h);
    (e.warning, e.reason, e.action, e.note).hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn remember(m: &mut Memory, key: u64, now: Timestamp) {
        m.events.insert(
            key,
            Remembered {
                name: format!("e{key}"),
                count: 1,
                last: now,
            },
        );
        m.order.push_back((now, key));
        m.forget(now);
    }

    #[test]
    fn an_event_is_forgotten_once_its_repeat_window_passed() {
        let mut m = Memory::default();
        remember(&mut m, 1, at(0));
        remember(&mut m, 2, at(200));
        m.forget(at(359));
        assert_eq!(m.events.len(), 2);
        m.forget(at(360));
        assert!(!m.events.contains_key(&1), "six minutes after it was seen");
        assert!(m.events.contains_key(&2));
    }

    #[test]
    fn a_repeat_keeps_an_event_remembered_from_its_last_sighting() {
        let mut m = Memory::default();
        remember(&mut m, 1, at(0));
        remember(&mut m, 1, at(300));
        m.forget(at(400));
        assert!(m.events.contains_key(&1), "seen again at 300 s");
        assert_eq!(m.order.len(), 1, "the first sighting's entry is dropped");
        m.forget(at(660));
        assert!(m.events.is_empty());
        assert!(m.order.is_empty());
    }

    #[test]
    fn memory_is_bounded_by_forgetting_the_oldest() {
        let mut m = Memory::default();
        for k in 0..(REMEMBERED as u64 + 10) {
            remember(&mut m, k, at(0));
        }
        assert_eq!(m.events.len(), REMEMBERED);
        assert!(!m.events.contains_key(&0));
        assert!(m.events.contains_key(&(REMEMBERED as u64 + 9)));
    }

    #[test]
    fn events_differ_by_object_reason_and_note() {
        let r = |uid: &str| ObjectReference {
            uid: Some(uid.into()),
            name: Some("app".into()),
            ..Default::default()
        };
        let e = |note| Published {
            warning: false,
            reason: "PointCreated",
            action: "Replicate",
            note,
        };
        assert_eq!(key_of(&e("a"), &r("1")), key_of(&e("a"), &r("1")));
        assert_ne!(key_of(&e("a"), &r("1")), key_of(&e("b"), &r("1")));
        assert_ne!(key_of(&e("a"), &r("1")), key_of(&e("a"), &r("2")));
    }
}
